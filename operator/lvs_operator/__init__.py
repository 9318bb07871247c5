"""lvs-operator: Linux Virtual Server (kernel IPVS) as a declarative Kubernetes load balancer."""

__version__ = "0.1.0"
