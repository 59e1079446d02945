"""One nvmlDeviceGetFieldValues call per GPU per poll: which fields, and what they mean.

Facts from nvml.h (nvidia-nvml-dev 13, the NVML_FI_* block and nvmlFieldValue_t):

- Each nvmlFieldValue_t carries its own nvmlReturn; `value` is undefined unless it is
  NVML_SUCCESS, and the union member to read is named by `valueType`.
- The NVLink error counters and throughput are per link, the link given in `scopeId` ("Link ID
  needs to be specified in the scopeId field"); their *_L0.._L5 ids are per *lane*, *_TOTAL the
  sum over the link's lanes.
- NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX/RX count KiB of data (protocol overhead excluded) since
  the driver loaded; energy is in mJ, power in mW; retired/remapped "pending" and "failure" are
  1/0 flags.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# NVML_FI_* ids (nvml.h), named here so this module reads without pynvml imported.
ECC_SBE_VOL_TOTAL = 3
ECC_DBE_VOL_TOTAL = 4
ECC_SBE_AGG_TOTAL = 5
ECC_DBE_AGG_TOTAL = 6
RETIRED_SBE = 29
RETIRED_DBE = 30
RETIRED_PENDING = 31
NVLINK_CRC_FLIT_TOTAL = 38
NVLINK_CRC_DATA_TOTAL = 45
NVLINK_REPLAY_TOTAL = 52
NVLINK_RECOVERY_TOTAL = 59
TOTAL_ENERGY_CONSUMPTION = 83
PCIE_REPLAY_COUNTER = 94
PCIE_REPLAY_ROLLOVER_COUNTER = 95
NVLINK_THROUGHPUT_DATA_TX = 138
NVLINK_THROUGHPUT_DATA_RX = 139
REMAPPED_COR = 142
REMAPPED_UNC = 143
REMAPPED_PENDING = 144
REMAPPED_FAILURE = 145
PCIE_L0_TO_RECOVERY_COUNTER = 169
POWER_AVERAGE = 185
POWER_INSTANT = 186

# Per GPU: field id -> the name the self-metric of its errors uses.
DEVICE_FIELDS = {
    ECC_SBE_VOL_TOTAL: "ecc_sbe_volatile_total",
    ECC_DBE_VOL_TOTAL: "ecc_dbe_volatile_total",
    ECC_SBE_AGG_TOTAL: "ecc_sbe_aggregate_total",
    ECC_DBE_AGG_TOTAL: "ecc_dbe_aggregate_total",
    RETIRED_SBE: "retired_sbe",
    RETIRED_DBE: "retired_dbe",
    RETIRED_PENDING: "retired_pending",
    REMAPPED_COR: "remapped_correctable",
    REMAPPED_UNC: "remapped_uncorrectable",
    REMAPPED_PENDING: "remapped_pending",
    REMAPPED_FAILURE: "remapped_failure",
    PCIE_REPLAY_COUNTER: "pcie_replay_counter",
    PCIE_REPLAY_ROLLOVER_COUNTER: "pcie_replay_rollover_counter",
    PCIE_L0_TO_RECOVERY_COUNTER: "pcie_l0_to_recovery_counter",
    TOTAL_ENERGY_CONSUMPTION: "total_energy_consumption",
    POWER_AVERAGE: "power_average",
    POWER_INSTANT: "power_instant",
}
# Per NVLink (scopeId = link): field id -> (name, the counter label existing series use).
LINK_ERROR_FIELDS = {
    NVLINK_REPLAY_TOTAL: ("nvlink_replay", "replay"),
    NVLINK_RECOVERY_TOTAL: ("nvlink_recovery", "recovery"),
    NVLINK_CRC_FLIT_TOTAL: ("nvlink_crc_flit", "crc_flit"),
    NVLINK_CRC_DATA_TOTAL: ("nvlink_crc_data", "crc_data"),
}
LINK_THROUGHPUT_FIELDS = {
    NVLINK_THROUGHPUT_DATA_TX: ("nvlink_throughput_data_tx", "transmit"),
    NVLINK_THROUGHPUT_DATA_RX: ("nvlink_throughput_data_rx", "receive"),
}

# nvmlValueType_t -> the nvmlValue_t member holding it.
_VALUE_MEMBERS = {
    0: "dVal",
    1: "uiVal",
    2: "ulVal",
    3: "ullVal",
    4: "sllVal",
    5: "siVal",
    6: "usVal",
}
NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3


def request(links: int) -> list[tuple[int, int]]:
    """(fieldId, scopeId) of every field one poll asks for, per GPU with `links` NVLinks."""
    wanted = [(field_id, 0) for field_id in DEVICE_FIELDS]
    for link in range(links):
        wanted += [(field_id, link) for field_id in LINK_ERROR_FIELDS]
        wanted += [(field_id, link) for field_id in LINK_THROUGHPUT_FIELDS]
    return wanted


@dataclass(frozen=True, slots=True)
class FieldReadings:
    """What one call answered: values by (fieldId, scopeId), and the fields that failed other
    than NOT_SUPPORTED (which only omits its series), by (name, NVML error name)."""

    values: dict[tuple[int, int], float | int]
    errors: tuple[tuple[str, str], ...]

    def get(self, field_id: int, scope: int = 0) -> float | int | None:
        return self.values.get((field_id, scope))

    def flag(self, field_id: int) -> bool | None:
        value = self.get(field_id)
        return None if value is None else bool(value)


def field_name(field_id: int) -> str:
    if field_id in DEVICE_FIELDS:
        return DEVICE_FIELDS[field_id]
    if field_id in LINK_ERROR_FIELDS:
        return LINK_ERROR_FIELDS[field_id][0]
    if field_id in LINK_THROUGHPUT_FIELDS:
        return LINK_THROUGHPUT_FIELDS[field_id][0]
    return f"field_{field_id}"


def parse(values: Sequence[Any], error_name: Any) -> FieldReadings:
    """The answers of one nvmlDeviceGetFieldValues call (pynvml's c_nvmlFieldValue_t array).
    `error_name(code)` names an NVML return code (pynvml's nvmlErrorString is one)."""
    found: dict[tuple[int, int], float | int] = {}
    errors = []
    for value in values:
        key = (int(value.fieldId), int(value.scopeId))
        code = int(value.nvmlReturn)
        if code == NVML_SUCCESS:
            member = _VALUE_MEMBERS.get(int(value.valueType))
            if member is not None:
                found[key] = getattr(value.value, member)
            continue
        if code != NVML_ERROR_NOT_SUPPORTED:
            errors.append((field_name(key[0]), error_name(code)))
    return FieldReadings(found, tuple(errors))


def link_values(
    readings: FieldReadings, fields: dict[int, tuple[str, str]], links: int
) -> Iterable[tuple[int, str, int]]:
    """(link, label, value) of the per-link fields that answered."""
    for link in range(links):
        for field_id, (_, label) in fields.items():
            value = readings.get(field_id, link)
            if value is not None:
                yield link, label, int(value)
