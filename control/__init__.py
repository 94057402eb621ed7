"""vxtap control plane: the network's MAC/IP table in etcd, synced into the fast path by a
control thread in each agent; pods join through the vxtap-cni plugin. Never touches a device.
See control/README.md for the key layout, the sync and the CNI plugin."""
