#!/usr/bin/env python3
"""Domain XML for the hostcollector lab hypervisor (stdlib only, Python 3.11).

As a module::

    from domxml import LAB_VMS, domain_xml, lab_vm
    xml = domain_xml(**lab_vm("hc-lab-a1"))

As a script (see ``--help``)::

    python3 tests/lab/domxml.py hc-lab-a1                 # XML of a fixed lab VM
    python3 tests/lab/domxml.py --list                    # the fixed lab VM names
    python3 tests/lab/domxml.py --json                    # LAB_VMS as JSON
    python3 tests/lab/domxml.py --scratch hc-scratch-1 UUID nova11 --project-id ... --ip 10.99.0.21
    python3 tests/lab/domxml.py --scratch hc-scratch-p1 UUID none --paused-noos

Guests are TCG (``type='qemu'``): KVM hangs the guest kernel on this machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import uuid as uuidlib
from xml.sax.saxutils import escape, quoteattr

LAB_DIR = "/var/lib/hostcollector-lab"
DISK_DIR = f"{LAB_DIR}/disks"
CONSOLE_DIR = f"{LAB_DIR}/console"
GUEST_DIR = f"{LAB_DIR}/guest"
DEFAULT_KERNEL = f"{GUEST_DIR}/vmlinuz"
DEFAULT_INITRD = f"{GUEST_DIR}/initrd.gz"
BRIDGE = "hcbr0"
BRIDGE_ADDR = "10.99.0.1"
NOVA11_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
NOVA10_NS = "http://openstack.org/xmlns/libvirt/nova/1.0"
TENANCY_NS = "https://cloud.example.com/xmlns/tenancy/1"
TENANT_STYLES = ("nova11", "nova10", "custom", "none")
LAB_PREFIX = "hc-lab-"
SCRATCH_PREFIX = "hc-scratch-"

# Tenant fields every LAB_VMS entry carries (None where the style has no use for it).
TENANT_FIELDS = ("project_id", "project_name", "user_id", "user_name", "flavor",
                 "display_name", "tier")
_REQUIRED = {
    "nova11": ("project_id", "project_name", "user_id", "user_name", "flavor", "display_name"),
    "nova10": ("project_id", "project_name", "user_id", "user_name", "flavor", "display_name"),
    "custom": ("project_id", "tier"),
    "none": (),
}


def _vm(name, uuid, tenant_style, ip, mac, **tenant):
    d = {"name": name, "uuid": uuid, "tenant_style": tenant_style, "ip": ip, "mac": mac,
         "disk_path": f"{DISK_DIR}/{name}.qcow2"}
    d.update({k: tenant.get(k) for k in TENANT_FIELDS})
    return d


# The four fixed lab VMs. Every dict has the same keys: name, uuid, tenant_style, ip, mac,
# disk_path, project_id, project_name, user_id, user_name, flavor, display_name, tier;
# so domain_xml(**vm) works for each.
LAB_VMS: list[dict] = [
    _vm("hc-lab-a1", "a1a1a1a1-0000-4000-8000-000000000001", "nova11",
        "10.99.0.11", "52:54:00:99:00:11",
        project_id="6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c", project_name="acme",
        user_id="9d8c7b6a5f4e4d3c8b2a1f0e9d8c7b6a", user_name="alice",
        flavor="g1.small", display_name="acme-train-1"),
    _vm("hc-lab-b1", "b1b1b1b1-0000-4000-8000-000000000002", "nova10",
        "10.99.0.12", "52:54:00:99:00:12",
        project_id="0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1", project_name="globex",
        user_id="1a2b3c4d5e6f4a7b8c9d0e1f2a3b4c5d", user_name="bob",
        flavor="m1.tiny", display_name="globex-web-1"),
    _vm("hc-lab-c1", "c1c1c1c1-0000-4000-8000-000000000003", "custom",
        "10.99.0.13", "52:54:00:99:00:13",
        project_id="0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1", tier="gold"),
    _vm("hc-lab-orphan", "d0d0d0d0-0000-4000-8000-000000000004", "none",
        "10.99.0.14", "52:54:00:99:00:14"),
]


def lab_vm(name: str) -> dict:
    """A copy of the LAB_VMS entry called ``name`` (KeyError if there is none)."""
    for vm in LAB_VMS:
        if vm["name"] == name:
            return dict(vm)
    raise KeyError(f"no lab VM named {name!r}; known: {', '.join(v['name'] for v in LAB_VMS)}")


def _nova_metadata(ns: str, *, display_name, flavor, user_id, user_name, project_id,
                   project_name, memory_mib, vcpus) -> str:
    e, a = escape, quoteattr
    return (
        f'<metadata><nova:instance xmlns:nova="{ns}">'
        '<nova:package version="27.1.0"/>'
        f"<nova:name>{e(display_name)}</nova:name>"
        "<nova:creationTime>2026-11-29 05:00:00</nova:creationTime>"
        f"<nova:flavor name={a(flavor)}>"
        f"<nova:memory>{memory_mib}</nova:memory><nova:disk>1</nova:disk>"
        "<nova:swap>0</nova:swap><nova:ephemeral>0</nova:ephemeral>"
        f"<nova:vcpus>{vcpus}</nova:vcpus></nova:flavor>"
        f"<nova:owner><nova:user uuid={a(user_id)}>{e(user_name)}</nova:user>"
        f"<nova:project uuid={a(project_id)}>{e(project_name)}</nova:project></nova:owner>"
        '<nova:root type="image" uuid="3f0c7a52-94f3-4d8e-8f9e-0c1b2a3d4e5f"/>'
        "</nova:instance></metadata>"
    )


def metadata_xml(tenant_style: str, *, memory_mib: int = 256, vcpus: int = 2,
                 **tenant) -> str:
    """The ``<metadata>`` element for a tenant style ('' for "none")."""
    if tenant_style not in TENANT_STYLES:
        raise ValueError(f"tenant_style must be one of {TENANT_STYLES}, not {tenant_style!r}")
    missing = [k for k in _REQUIRED[tenant_style] if not tenant.get(k)]
    if missing:
        raise ValueError(f"tenant_style {tenant_style!r} needs {', '.join(missing)}")
    if tenant_style in ("nova11", "nova10"):
        ns = NOVA11_NS if tenant_style == "nova11" else NOVA10_NS
        return _nova_metadata(ns, memory_mib=memory_mib, vcpus=vcpus,
                              **{k: tenant[k] for k in _REQUIRED[tenant_style]})
    if tenant_style == "custom":
        return (f'<metadata><tenancy:instance xmlns:tenancy="{TENANCY_NS}">'
                f"<tenancy:tenant id={quoteattr(tenant['project_id'])}/>"
                f"<tenancy:tier>{escape(tenant['tier'])}</tenancy:tier>"
                "</tenancy:instance></metadata>")
    return ""


def domain_xml(name: str, uuid: str, *, tenant_style: str, ip: str | None, mac: str,
               disk_path: str, memory_mib: int | None = None, vcpus: int = 2,
               kernel: str = DEFAULT_KERNEL, initrd: str = DEFAULT_INITRD,
               paused_noos: bool = False, project_id: str | None = None,
               project_name: str | None = None, user_id: str | None = None,
               user_name: str | None = None, flavor: str | None = None,
               display_name: str | None = None, tier: str | None = None,
               bridge: str = BRIDGE, console_log: str | None = None) -> str:
    """Libvirt domain XML of one lab guest.

    - TCG (``type='qemu'``), machine ``pc``, one virtio qcow2 disk ``vda`` (``disk_path``
      must exist before start), one virtio NIC on ``bridge``, a virtio balloon with 5 s
      stats, a serial console (pty, logged to ``console_log``, default
      /var/lib/hostcollector-lab/console/NAME.log).
    - Normal guests boot ``kernel``/``initrd`` directly with
      ``console=ttyS0 edd=off quiet hc.ip=IP/24``; ``ip`` may carry a prefix (default /24).
    - ``paused_noos=True``: no kernel (nothing to boot; meant to be started paused for
      scale tests), ``ip`` ignored, memory defaults to 32 MiB instead of 256.
    - ``memory_mib`` None means 256 (32 with ``paused_noos``); nova flavors report
      ``memory_mib`` and ``vcpus`` (256 and 2 by default, exactly the documented shape).
    - Tenant fields: nova11/nova10 need project_id, project_name, user_id, user_name,
      flavor, display_name; custom needs project_id and tier; none needs nothing and
      gives no ``<metadata>``. Unused fields are ignored.
    """
    uuid = str(uuidlib.UUID(uuid))
    if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", mac or ""):
        raise ValueError(f"bad MAC address {mac!r}")
    if memory_mib is None:
        memory_mib = 32 if paused_noos else 256
    meta = metadata_xml(tenant_style, memory_mib=memory_mib, vcpus=vcpus,
                        project_id=project_id, project_name=project_name,
                        user_id=user_id, user_name=user_name, flavor=flavor,
                        display_name=display_name, tier=tier)
    a = quoteattr
    if console_log is None:
        console_log = f"{CONSOLE_DIR}/{name}.log"
    if paused_noos:
        os_xml = ("<os><type arch='x86_64' machine='pc'>hvm</type>"
                  "<boot dev='hd'/></os>")
    else:
        if not ip:
            raise ValueError("ip is required for a booting guest (hc.ip= on the cmdline)")
        cidr = ip if "/" in ip else f"{ip}/24"
        os_xml = ("<os><type arch='x86_64' machine='pc'>hvm</type>"
                  f"<kernel>{escape(kernel)}</kernel><initrd>{escape(initrd)}</initrd>"
                  f"<cmdline>console=ttyS0 edd=off quiet hc.ip={escape(cidr)}</cmdline></os>")
    lines = [
        "<domain type='qemu'>",
        f"  <name>{escape(name)}</name>",
        f"  <uuid>{uuid}</uuid>",
    ]
    if meta:
        lines.append(f"  {meta}")
    lines += [
        f"  <memory unit='MiB'>{memory_mib}</memory>",
        f"  <currentMemory unit='MiB'>{memory_mib}</currentMemory>",
        f"  <vcpu placement='static'>{vcpus}</vcpu>",
        f"  {os_xml}",
        "  <features><acpi/><apic/></features>",
        "  <clock offset='utc'/>",
        "  <on_poweroff>destroy</on_poweroff>",
        "  <on_reboot>restart</on_reboot>",
        "  <on_crash>destroy</on_crash>",
        "  <devices>",
        "    <disk type='file' device='disk'>",
        "      <driver name='qemu' type='qcow2'/>",
        f"      <source file={a(disk_path)}/>",
        "      <target dev='vda' bus='virtio'/>",
        "    </disk>",
        f"    <interface type='bridge'><source bridge={a(bridge)}/><model type='virtio'/>"
        f"<mac address={a(mac.lower())}/></interface>",
        "    <controller type='usb' model='none'/>",
        f"    <serial type='pty'><log file={a(console_log)} append='off'/>"
        "<target port='0'/></serial>",
        "    <console type='pty'><target type='serial' port='0'/></console>",
        "    <memballoon model='virtio'><stats period='5'/></memballoon>",
        "  </devices>",
        "</domain>",
    ]
    return "\n".join(lines) + "\n"


def make_disk(path: str, size_mib: int = 64) -> None:
    """Create an empty qcow2 image at ``path`` unless it exists (needs qemu-img)."""
    import os
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, f"{size_mib}M"],
                   check=True)


def scratch_mac(name: str) -> str:
    """A stable locally-administered-range MAC for a scratch VM (52:54:00:aX:..:..)."""
    h = hashlib.sha256(name.encode()).digest()
    return f"52:54:00:{0xA0 | (h[0] & 0x0F):02x}:{h[1]:02x}:{h[2]:02x}"


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="domxml.py",
        description="Print libvirt domain XML for the hostcollector lab.",
        epilog=(
            "Fixed lab VMs: " + ", ".join(v["name"] for v in LAB_VMS) + ". "
            "Scratch VMs (--scratch) must be named hc-scratch-* so that "
            "'vms.sh down' removes them; their disk defaults to "
            f"{DISK_DIR}/NAME.qcow2 (create it, e.g. qemu-img create -f qcow2 PATH 64M). "
            "Tenant option defaults for scratch VMs: --display-name NAME, "
            "--project-name scratch, --user-id 000..0, --user-name scratch, "
            "--flavor m1.tiny, --tier bronze; --project-id has no default. "
            "Example: domxml.py --scratch hc-scratch-p1 "
            "e0e0e0e0-0000-4000-8000-000000000001 nova11 --project-id "
            "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c --paused-noos | virsh create --paused /dev/stdin"),
    )
    p.add_argument("name", nargs="?", help="print the XML of this fixed lab VM")
    p.add_argument("--list", action="store_true", help="print the fixed lab VM names")
    p.add_argument("--json", action="store_true", help="print LAB_VMS as JSON")
    p.add_argument("--field", nargs=2, metavar=("NAME", "KEY"),
                   help="print one LAB_VMS field of a lab VM (e.g. hc-lab-a1 disk_path)")
    p.add_argument("--scratch", nargs=3, metavar=("NAME", "UUID", "STYLE"),
                   help=f"print XML of an extra VM; STYLE is one of {', '.join(TENANT_STYLES)}")
    g = p.add_argument_group("options for --scratch")
    g.add_argument("--ip", help="guest address, e.g. 10.99.0.21 or 10.99.0.21/24 "
                                "(required unless --paused-noos)")
    g.add_argument("--mac", help="MAC (default: derived from NAME, 52:54:00:aX:XX:XX)")
    g.add_argument("--disk", help=f"qcow2 path (default {DISK_DIR}/NAME.qcow2)")
    g.add_argument("--memory-mib", type=int, help="memory (default 256, 32 with --paused-noos)")
    g.add_argument("--vcpus", type=int, default=2, help="vCPUs (default 2)")
    g.add_argument("--paused-noos", action="store_true",
                   help="no kernel: a QEMU process to start with 'virsh create --paused'")
    g.add_argument("--kernel", default=DEFAULT_KERNEL)
    g.add_argument("--initrd", default=DEFAULT_INITRD)
    g.add_argument("--project-id")
    g.add_argument("--project-name", default="scratch")
    g.add_argument("--user-id", default="0" * 32)
    g.add_argument("--user-name", default="scratch")
    g.add_argument("--flavor", default="m1.tiny")
    g.add_argument("--display-name")
    g.add_argument("--tier", default="bronze")
    args = p.parse_args(argv)

    modes = sum(bool(x) for x in (args.name, args.list, args.json, args.field, args.scratch))
    if modes != 1:
        p.error("give exactly one of NAME, --list, --json, --field, --scratch")
    try:
        if args.list:
            print("\n".join(v["name"] for v in LAB_VMS))
        elif args.json:
            print(json.dumps(LAB_VMS, indent=2))
        elif args.field:
            vm = lab_vm(args.field[0])
            if args.field[1] not in vm:
                p.error(f"unknown key {args.field[1]!r}; keys: {', '.join(vm)}")
            print("" if vm[args.field[1]] is None else vm[args.field[1]])
        elif args.name:
            sys.stdout.write(domain_xml(**lab_vm(args.name)))
        else:
            name, uuid, style = args.scratch
            if not name.startswith(SCRATCH_PREFIX):
                p.error(f"scratch VM names must start with {SCRATCH_PREFIX!r} "
                        "(vms.sh down removes them by that prefix)")
            sys.stdout.write(domain_xml(
                name, uuid, tenant_style=style, ip=args.ip,
                mac=args.mac or scratch_mac(name),
                disk_path=args.disk or f"{DISK_DIR}/{name}.qcow2",
                memory_mib=args.memory_mib, vcpus=args.vcpus, kernel=args.kernel,
                initrd=args.initrd, paused_noos=args.paused_noos,
                project_id=args.project_id, project_name=args.project_name,
                user_id=args.user_id, user_name=args.user_name, flavor=args.flavor,
                display_name=args.display_name or name, tier=args.tier))
    except (KeyError, ValueError) as exc:
        print(f"domxml.py: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
