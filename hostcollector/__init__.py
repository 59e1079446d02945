"""hostcollector: hypervisor-side telemetry for GPU clouds, attributed to VMs and tenants."""

__version__ = "0.1.0"
