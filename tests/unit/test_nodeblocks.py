"""NodeBlocks: a node's blocks follow its pods (fake datastore, real local IPAM on disk)."""
from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network

import pytest

from cni.errors import TRY_AGAIN_LATER, IPAMExhausted
from cni.ipam import IPAM
from podroute.datastore import IPAMBlock, IPPool, Node
from podroute.datastore.fake import FakeDatastore, FakeServer
from podroute.ipamblocks import BlockAffinity, BlockPolicy
from podroute.nodeblocks import NodeBlocks

N = IPv4Network


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


async def setup(tmp_path, pool: IPPool, max_blocks: int = 20):
    server, clock, announced = FakeServer(), Clock(), []
    server.put(pool, Node("n1", IPv4Address("198.18.0.11")))
    aff = BlockAffinity(FakeDatastore(server), "n1", on_blocks=announced.append, clock=clock,
                        policy=BlockPolicy(max_blocks_per_host=max_blocks, grace_s=60))
    nb = NodeBlocks(aff, interval_s=0.05)
    aff.may_release = nb.may_release
    first = await aff.ensure()
    nb.ipam = IPAM(tmp_path / "ipam", blocks=first, on_exhausted=nb.exhausted)
    return server, clock, announced, aff, nb


async def test_full_blocks_fail_the_add_at_once_then_the_node_grows_and_the_retry_succeeds(tmp_path):
    server, clock, announced, aff, nb = await setup(tmp_path, IPPool("p", N("198.19.0.0/24"), block_size=28))
    for i in range(16):
        nb.ipam.allocate(f"net.c{i}.eth0")
    run = asyncio.create_task(nb.run())
    try:
        await asyncio.sleep(0)                                       # run() is up and knows its loop
        with pytest.raises(IPAMExhausted) as ei:
            await asyncio.to_thread(nb.ipam.allocate, "net.c16.eth0")  # an ADD: no datastore wait
        assert ei.value.code == TRY_AGAIN_LATER and "claiming another block" in ei.value.msg
        await asyncio.wait_for(_until(lambda: len(nb.ipam.blocks) == 2), 10)
        ip = nb.ipam.allocate("net.c16.eth0")                         # the runtime's retry
        assert ip in aff.mine()[0] or ip in aff.mine()[1]
        assert len(announced[-1]) == 2 and set(announced[-1]) == set(nb.ipam.blocks)
    finally:
        run.cancel()


async def test_pool_exhausted_is_in_the_add_error(tmp_path):
    server, clock, announced, aff, nb = await setup(tmp_path, IPPool("p", N("198.19.0.0/28"), block_size=28))
    for i in range(16):
        nb.ipam.allocate(f"net.c{i}.eth0")
    await nb.tick()
    with pytest.raises(IPAMExhausted, match=r"pool exhausted: no free block in the enabled IP pools \(198.19.0.0/28\)"):
        nb.ipam.allocate("net.c16.eth0")


async def test_an_emptied_block_leaves_local_ipam_then_the_datastore(tmp_path):
    server, clock, announced, aff, nb = await setup(tmp_path, IPPool("p", N("198.19.0.0/24"), block_size=28))
    for i in range(17):
        if i == 16:
            await nb.tick()                                          # full: claims a second block
        nb.ipam.allocate(f"net.c{i}.eth0")
    second = next(b for b in nb.ipam.blocks if nb.ipam.usage()[b] == 1)   # the 17th pod's block
    nb.ipam.release("net.c16.eth0")
    await nb.tick()
    clock.t = 61
    await nb.tick()
    assert second not in aff.mine() and second not in nb.ipam.blocks
    assert {s.value.cidr for s in server.store.items.values() if isinstance(s.value, IPAMBlock)} == set(aff.mine())


async def test_a_block_that_got_a_pod_meanwhile_is_kept(tmp_path):
    server, clock, announced, aff, nb = await setup(tmp_path, IPPool("p", N("198.19.0.0/24"), block_size=28))
    for i in range(16):
        nb.ipam.allocate(f"net.c{i}.eth0")
    await nb.tick()
    second = next(b for b in nb.ipam.blocks if nb.ipam.usage()[b] == 0)
    await aff.release_empty({second: 0, aff.mine()[0]: 16})           # empty since now
    clock.t = 61
    nb.ipam.allocate("net.late.eth0")                                  # a pod lands in it before the release
    assert await aff.release_empty({second: 0, aff.mine()[0]: 16}) == []   # usage read before that pod
    assert second in aff.mine() and second in nb.ipam.blocks


async def _until(cond):
    while not cond():
        await asyncio.sleep(0.01)


def test_ipam_set_blocks_refuses_to_drop_a_block_in_use(tmp_path):
    ipam = IPAM(tmp_path / "ipam", blocks=[N("198.19.0.0/28"), N("198.19.0.16/28")])
    for i in range(17):
        ipam.allocate(f"net.c{i}.eth0")
    with pytest.raises(ValueError, match=r"IPAM block 198.19.0.16/28 still has 1 allocation\(s\)"):
        ipam.set_blocks([N("198.19.0.0/28")])
    ipam.release("net.c16.eth0")
    ipam.set_blocks([N("198.19.0.0/28")])
    assert ipam.usage() == {N("198.19.0.0/28"): 16}
    with pytest.raises(ValueError, match="overlap"):
        ipam.set_blocks([N("198.19.0.0/28"), N("198.19.0.0/27")])


async def test_an_outage_postpones_upkeep_with_one_log_line_and_a_resume(tmp_path, caplog):
    import logging
    caplog.set_level(logging.INFO, logger="podroute.nodeblocks")
    server, clock, announced, aff, nb = await setup(tmp_path, IPPool("p", N("198.19.0.0/24"), block_size=28))
    for i in range(16):
        nb.ipam.allocate(f"net.c{i}.eth0")                 # full: every round tries to claim
    server.down()
    run = asyncio.create_task(nb.run())
    try:
        await asyncio.wait_for(_until(lambda: nb._postponed), 10)
        await asyncio.sleep(0.3)                            # several more rounds at 0.05 s
        assert caplog.text.count("block upkeep postponed") == 1 and len(aff.mine()) == 1
        server.up()
        await asyncio.wait_for(_until(lambda: len(aff.mine()) == 2), 10)
        assert "block upkeep resumed" in caplog.text
    finally:
        run.cancel()
