"""``podroute lab``: an N-node podroute cluster in network namespaces, with real BGP routers.

This package is part of the product wheel on purpose. ``podroute lab up`` is the README's
main job: it is how a user sees podroute route pods between nodes on one machine, and
tests/e2e and bench/ build on it. It runs the wheel's own ``podroute node run`` and
``podroute cni install`` in each node namespace, needs no Python package beyond the
wheel's dependencies (BIRD 2 or FRR and iproute2 come from the distribution), and only
``podroute lab`` imports it: the agent, the CNI plugin and felix/, bgp/, cni/, ipip/ never
do (tests/unit/test_lab_boundary.py). Calico keeps its FV infrastructure out of
calico/node because it is Go test code around Docker and etcd, not a user command; this lab
is a user command, so it stays next to the code it demonstrates.

Modules, by concern:

- :mod:`~podroute.lab.options`: what ``lab up`` accepts, checked before anything exists
- :mod:`~podroute.lab.model`: address plan, the recorded lab state (lab.json), bounded waits
- :mod:`~podroute.lab.netns`: iproute2 wrappers (namespaces, veths, PIDs)
- :mod:`~podroute.lab.fabric`: underlay bridges, router and node namespaces
- :mod:`~podroute.lab.routers`, :mod:`~podroute.lab.bird`, :mod:`~podroute.lab.frr`:
  the external BGP routers (BIRD 2 or FRR bgpd; reflector or ToR)
- :mod:`~podroute.lab.agents`: node.yaml, the cluster file, starting and asking node agents
- :mod:`~podroute.lab.etcd`: the etcd of a ``--datastore etcd`` lab (start, stop, seed, etcdctl)
- :mod:`~podroute.lab.kube`: the kube-apiserver of a ``--datastore kubernetes`` lab (start, CRDs and role, kubelet-style Nodes)
- :mod:`~podroute.lab.adminjob`: the lab's writes to either datastore, from inside its namespace
- :mod:`~podroute.lab.membership`: ``lab node add`` / ``lab node remove`` at run time
- :mod:`~podroute.lab.control`: stop, kill, restart agents; stop and start routers
- :mod:`~podroute.lab.pods`, :mod:`~podroute.lab.libcni`: pods wired through each node's
  installed conflist with libcni's semantics
- :mod:`~podroute.lab.probes`: FIB probes, new-node convergence timing, the ping matrix
- :mod:`~podroute.lab.report`: report.txt and report.json from given inputs
- :mod:`~podroute.lab.monitoring`: the lab's Prometheus (``--monitoring``) and its HTTP API
- :mod:`~podroute.lab.runner`: ``lab up``, ``lab down``, ``lab status``
- :mod:`~podroute.lab.reconfigure`: ``lab reconfigure`` (switch encapsulation, rolling restart)
"""
