"""Backends replaced at their boundary, for the synthetic-scale benchmark: a libvirt connection
that answers with typed parameters and metadata recorded from the lab, cloned N times."""

from __future__ import annotations

import copy
import uuid as uuidlib
from typing import Any

from tests.conftest import load_raw


class FakeDomain:
    def __init__(self, uuid: str, name: str, metadata: dict[str, str | None], xml: str) -> None:
        self._uuid, self._name, self._metadata, self._xml = uuid, name, metadata, xml

    def UUIDString(self) -> str:
        return self._uuid

    def name(self) -> str:
        return self._name

    def ID(self) -> int:
        return 1  # every fake domain runs

    def controlInfo(self) -> list[int]:
        return [0, 0, 0]

    def metadata(self, _kind: int, namespace: str, _flags: int) -> str:
        import libvirt

        xml = self._metadata.get(namespace)
        if xml is None:
            error = libvirt.libvirtError("no metadata")
            error.err = (libvirt.VIR_ERR_NO_DOMAIN_METADATA, 0, "no metadata", 0, "", "", "", 0, 0)
            raise error
        return xml

    def XMLDesc(self, _flags: int) -> str:
        return self._xml


class FakeConnection:
    """listAllDomains / domainListGetStats over N clones of the lab's recorded domains."""

    def __init__(self, count: int, pci_per_vm: dict[int, str] | None = None) -> None:
        raw = load_raw()
        self.domains: list[FakeDomain] = []
        self.stats: dict[str, dict[str, Any]] = {}
        for i in range(count):
            entry = raw[i % len(raw)]
            uuid = str(uuidlib.UUID(int=i + 1))
            hostdev = ""
            if pci_per_vm and i in pci_per_vm:
                dom, bus, rest = pci_per_vm[i].split(":")
                slot, fn = rest.split(".")
                hostdev = (
                    f"<hostdev mode='subsystem' type='pci'><source><address domain='0x{dom}' "
                    f"bus='0x{bus}' slot='0x{slot}' function='0x{fn}'/></source></hostdev>"
                )
            xml = f"<domain><name>vm-{i}</name><devices>{hostdev}</devices></domain>"
            self.domains.append(FakeDomain(uuid, f"vm-{i}", entry["metadata"], xml))
            self.stats[uuid] = copy.deepcopy(entry["stats"])
        self.cycle = 0

    def tick(self) -> None:
        """Counters move between cycles, as on a live host."""
        self.cycle += 1
        for stats in self.stats.values():
            stats["cpu.time"] += 1_000_000 * self.cycle

    # the libvirt API surface the source uses
    def listAllDomains(self, _flags: int = 0) -> list[FakeDomain]:
        return list(self.domains)

    def domainListGetStats(
        self, handles: list[FakeDomain], _mask: int, _flags: int
    ) -> list[tuple[FakeDomain, dict[str, Any]]]:
        return [(dom, dict(self.stats[dom.UUIDString()])) for dom in handles]

    def isAlive(self) -> int:
        return 1

    def setKeepAlive(self, *_args: Any) -> None:
        pass

    def registerCloseCallback(self, *_args: Any) -> None:
        pass

    def domainEventRegisterAny(self, *_args: Any) -> int:
        return 0

    def close(self) -> int:
        return 0
