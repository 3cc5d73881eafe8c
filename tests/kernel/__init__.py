"""A real Linux kernel (Debian's, which has IPIP) under qemu, for tests this host's kernel cannot run."""
