"""Kubernetes plumbing for the ``kubernetes`` datastore (:mod:`podroute.datastore.kubestore`):
:mod:`.codec` (objects <-> model), :mod:`.rest` (calls and error mapping), :mod:`.watcher`
(a watch stream in a thread)."""
