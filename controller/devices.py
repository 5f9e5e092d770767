"""Know the devices before driving them: identity (43/14), MAP_VERSION and FIRMWARE_VERSION.

The host drives only register maps it was written for. Anything else is refused with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from protocol import ft8, ls4

from .modbus_link import BusLink, DeviceRefused

# Function 43/14 basic object ids (Modbus application protocol, 6.21)
VENDOR_NAME_OBJECT = 0x00
PRODUCT_CODE_OBJECT = 0x01
REVISION_OBJECT = 0x02


class DeviceMismatch(Exception):
    """The device on the bus is not one this host knows how to drive."""


@dataclass(frozen=True, kw_only=True)
class DeviceSpec:
    product_code: str
    vendor_name: str
    revision: str
    map_version: int
    firmware_version: int
    map_version_address: int
    firmware_version_address: int
    channel_count_address: int
    channel_count: int


def _spec(device: ModuleType) -> DeviceSpec:
    """What the host knows of a device, from its register map module (protocol.ls4, protocol.ft8)."""
    regmap = device.REGISTER_MAP
    return DeviceSpec(
        product_code=device.PRODUCT_CODE,
        vendor_name=device.VENDOR_NAME,
        revision=device.REVISION,
        map_version=device.MAP_VERSION,
        firmware_version=device.FIRMWARE_VERSION,
        map_version_address=regmap["MAP_VERSION"].address,
        firmware_version_address=regmap["FIRMWARE_VERSION"].address,
        channel_count_address=regmap["CHANNEL_COUNT"].address,
        channel_count=device.CHANNEL_COUNT,
    )


LS4_SPEC = _spec(ls4)
FT8_SPEC = _spec(ft8)


@dataclass(frozen=True, kw_only=True)
class DeviceIdentity:
    unit: int
    vendor_name: str
    product_code: str
    revision: str
    map_version: int
    firmware_version: int

    @property
    def firmware(self) -> str:
        return f"{self.firmware_version >> 8}.{self.firmware_version & 0xFF}"


def _text(info: dict[int, bytes], object_id: int) -> str:
    raw = info.get(object_id, b"")
    return raw.decode("ascii", errors="replace") if isinstance(raw, bytes) else str(raw)


async def check_device(link: BusLink, *, unit: int, spec: DeviceSpec) -> DeviceIdentity:
    """Read the identity and version registers of `unit` and compare them with `spec`."""
    where = f"unit {unit} on bus {link.settings.name}"
    try:
        info = await link.read_identification(unit=unit)
    except DeviceRefused as err:
        raise DeviceMismatch(f"{where}: refused device identification (exception {err.code:#04x}); expected {spec.product_code}") from err
    product = _text(info, PRODUCT_CODE_OBJECT)
    vendor = _text(info, VENDOR_NAME_OBJECT)
    revision = _text(info, REVISION_OBJECT)
    if product != spec.product_code or vendor != spec.vendor_name:
        raise DeviceMismatch(f"{where}: is {vendor!r} {product!r}, expected {spec.vendor_name!r} {spec.product_code!r}")
    words = await link.read_input(unit=unit, address=0, count=max(spec.map_version_address, spec.firmware_version_address, spec.channel_count_address) + 1)
    map_version = words[spec.map_version_address]
    firmware = words[spec.firmware_version_address]
    channels = words[spec.channel_count_address]
    if map_version != spec.map_version:
        raise DeviceMismatch(f"{where}: {spec.product_code} register map version {map_version}, this host knows only version {spec.map_version}")
    if firmware != spec.firmware_version:
        raise DeviceMismatch(
            f"{where}: {spec.product_code} firmware {firmware >> 8}.{firmware & 0xFF}, this host knows only {spec.firmware_version >> 8}.{spec.firmware_version & 0xFF}"
        )
    if revision != spec.revision:
        raise DeviceMismatch(f"{where}: {spec.product_code} identifies as revision {revision!r} but its registers say {spec.revision!r}")
    if channels != spec.channel_count:
        raise DeviceMismatch(f"{where}: {spec.product_code} reports {channels} channels, expected {spec.channel_count}")
    return DeviceIdentity(unit=unit, vendor_name=vendor, product_code=product, revision=revision, map_version=map_version, firmware_version=firmware)
