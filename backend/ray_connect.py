"""One way to reach Ray for every feature that runs work on a cluster (sweeps, studies, the sharded
neuron index): a clear one-line error when Ray is missing or unreachable, and who must disconnect."""

from __future__ import annotations

from backend.errors import UserError


def connect_ray(address: str) -> bool:
    """Connect to Ray (an address, 'auto', or 'local' for an instance started here); True when
    this call started the connection (and so must end it)."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray-address needs Ray: pip install 'prunelens[cluster]'") from None
    if ray.is_initialized():
        return False
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot connect to Ray at {address!r}: {str(exc).splitlines()[0][:200]}") from exc
    return True
