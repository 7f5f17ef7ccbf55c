"""The emulated machine: platform, VMs and the hypervisor over one engine (imports only the engine)."""
