"""A fleet of nodes on a store it already runs (etcd or Consul): policies, registry, rollout."""
