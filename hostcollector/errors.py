"""The exception tree: what is fatal at start, what costs one poll, what is no failure at all."""


class HostCollectorError(Exception):
    """Base of every error hostcollector raises on purpose."""


class ConfigError(HostCollectorError):
    """The configuration is unusable. Fatal at start; lists every problem by key path."""

    def __init__(self, problems: list[str], origin: str = "config") -> None:
        self.problems = problems
        self.origin = origin
        super().__init__(f"{origin}: " + "; ".join(problems))

    def render(self) -> str:
        lines = [f"{self.origin}: {len(self.problems)} problem(s)"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


class SourceError(HostCollectorError):
    """This poll of one source failed; the source is marked down and the daemon carries on.

    `reason` is a short, stable identifier (a label value in self-metrics), the message says what
    happened for the log.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class SourceDegraded(SourceError):
    """This poll failed, yet part of it was served from elsewhere: the source is marked down
    (its error counted, its up metric 0) and `result` replaces its last one. The libvirt source
    raises it while libvirtd does not answer and the kernel still gives the running VMs' CPU,
    vCPU and NIC counters."""

    def __init__(self, reason: str, message: str, result: object) -> None:
        super().__init__(reason, message)
        self.result = result
