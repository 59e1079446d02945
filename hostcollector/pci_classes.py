"""Readable names of the PCI device classes a VM is commonly given, for
hostcollector_pci_device_info's class_name.

Keyed by base class and subclass, the first two bytes of sysfs `class` ("0x010802": 0x01 mass
storage, 0x08 non-volatile memory, programming interface 0x02 NVMe), as the PCI Code and ID
Assignment Specification numbers them (also include/linux/pci_ids.h, PCI_CLASS_*).
"""

from __future__ import annotations

CLASS_NAMES = {
    "0x0100": "scsi",
    "0x0101": "ide",
    "0x0104": "raid",
    "0x0106": "sata",
    "0x0107": "sas",
    "0x0108": "nvme",  # non-volatile memory controller; NVMe is its programming interface 0x02
    "0x0200": "ethernet",
    "0x0207": "infiniband",
    "0x0280": "network",
    "0x0300": "vga",
    "0x0302": "3d_controller",
    "0x0380": "display",
    "0x0403": "audio",
    "0x0880": "system_peripheral",
    "0x0b40": "coprocessor",
    "0x0c03": "usb",
    "0x0c04": "fibre_channel",
    "0x1200": "processing_accelerator",
}


def class_name(pci_class: str | None) -> str:
    """ "" when sysfs gave no class; "other" for one not named here."""
    if not pci_class:
        return ""
    return CLASS_NAMES.get(pci_class[:6].lower(), "other")
