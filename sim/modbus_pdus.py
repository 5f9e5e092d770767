"""Request PDUs of the simulated LS-4/FT-8: exactly the function codes the datasheets list.

Stock pymodbus request classes fall short of the datasheets in several ways (see
docs/simulator.md); the server registers these classes instead, one per function code 0-0x80:

- Functions 03/04/06/16 and 43/14 as the datasheets and the Modbus application protocol
  v1.1b3 say: counts outside 1-125 (read) or 1-123 (write), a byte count that does not match,
  or a body of the wrong length answer 03 (the stock decode raises instead, and the framer
  answers 01 with function code 0x00); function 06 echoes the request.
- Read Device Identification (43/14) answers the addressed unit's own identity; pymodbus
  keeps one identity object for the whole process.
- Every other function code answers 01 with its own function code, without touching the
  register store (coils and discrete inputs are not part of either device).

`decode` never raises: a malformed body is remembered and answered 03 in `datastore_update`,
so a decoding failure can never take the stock path that answers with the wrong function code.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, cast

from pymodbus.constants import DeviceInformation, ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.mei_message import ReadDeviceInformationResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterResponse,
)
from pymodbus.simulator.simcore import SimCore

from protocol.validation import MAX_READ_COUNT, MAX_WRITE_COUNT, READ_DEVICE_ID_MEI_TYPE

from .device import Identity

MAX_REQUEST_FUNCTION_CODE = 0x80  # DecodePDU.decode treats every byte above 0x80 as an exception response
CONFORMITY_BASIC_STREAM_AND_INDIVIDUAL = 0x81  # Modbus v1.1b3 6.21: basic objects, both access types
OBJECT_VENDOR_NAME, OBJECT_PRODUCT_CODE, OBJECT_REVISION = 0x00, 0x01, 0x02

# RTU length (unit id .. CRC) of the standard requests the devices refuse, so that they are answered
# at once: a fixed size, or the position of the byte-count byte. Any other code is delimited by the
# inter-frame silence instead (see sim/server.py).
_FIXED_RTU_SIZE = {0x01: 8, 0x02: 8, 0x05: 8, 0x07: 4, 0x08: 8, 0x0B: 4, 0x0C: 4, 0x11: 4, 0x16: 10, 0x18: 6}
_BYTE_COUNT_POS = {0x0F: 6, 0x14: 2, 0x15: 2, 0x17: 10}


@dataclass(frozen=True)
class RequestContext:
    """What a request may touch: the register store (bounds checks and device I/O) and each unit's identity."""

    core: SimCore
    identities: Mapping[int, Identity]


class SimRequest(ModbusPDU):
    """Base of every request the simulator accepts off the wire."""

    def __init__(self, dev_id: int = 0, transaction_id: int = 0) -> None:
        super().__init__(dev_id=dev_id, transaction_id=transaction_id)
        self.malformed = False

    def decode(self, data: bytes) -> None:
        try:
            self.parse(bytes(data))
        except (ValueError, IndexError, struct.error):
            self.malformed = True

    def parse(self, body: bytes) -> None:
        """Read the request body (after the function code); raise ValueError if it is malformed."""

    def refuse(self, code: ExcCodes) -> ExceptionResponse:
        return ExceptionResponse(self.function_code, code, device_id=self.dev_id, transaction=self.transaction_id)

    async def datastore_update(self, context: RequestContext, device_id: int) -> ModbusPDU:  # type: ignore[override]
        if self.malformed:
            return self.refuse(ExcCodes.ILLEGAL_VALUE)
        return await self.execute(context, device_id)

    async def execute(self, context: RequestContext, device_id: int) -> ModbusPDU:
        raise NotImplementedError


class IllegalFunctionRequest(SimRequest):
    """Any function code the datasheets do not list: exception 01, nothing touched."""

    @classmethod
    def for_code(cls, function_code: int) -> IllegalFunctionRequest:
        """An instance for a code outside the decoder's table (above 0x80)."""
        request = cls()
        request.function_code = function_code
        return request

    @classmethod
    def calculateRtuFrameSize(cls, data: bytes) -> int:
        if (size := _FIXED_RTU_SIZE.get(cls.function_code)) is not None:
            return size
        if (pos := _BYTE_COUNT_POS.get(cls.function_code)) is not None:
            return data[pos] + pos + 3 if len(data) > pos else 0
        return 0  # unknown length: the frame ends at the next silence on the line

    async def datastore_update(self, context: RequestContext, device_id: int) -> ModbusPDU:  # type: ignore[override]
        # 01 before any look at the body: the function code is checked first (Modbus v1.1b3, 4.4)
        return self.refuse(ExcCodes.ILLEGAL_FUNCTION)


class ReadRegistersRequest(SimRequest):
    """Functions 03 and 04: read `count` registers of the holding or the input table."""

    rtu_frame_size = 8
    response_class: ClassVar[type[ModbusPDU]]

    def parse(self, body: bytes) -> None:
        if len(body) != 4:
            raise ValueError("read request body must be 4 bytes")
        self.address, self.count = struct.unpack(">HH", body)

    async def execute(self, context: RequestContext, device_id: int) -> ModbusPDU:
        if not 1 <= self.count <= MAX_READ_COUNT:
            return self.refuse(ExcCodes.ILLEGAL_VALUE)
        values = await context.core.async_getValues(device_id, self.function_code, self.address, self.count)
        if isinstance(values, ExcCodes):
            return self.refuse(values)
        return self.response_class(registers=cast(list[int], values), dev_id=device_id, transaction_id=self.transaction_id)


class ReadHoldingRequest(ReadRegistersRequest):
    function_code = 0x03
    response_class = ReadHoldingRegistersResponse


class ReadInputRequest(ReadRegistersRequest):
    function_code = 0x04
    response_class = ReadInputRegistersResponse


class WriteSingleRequest(SimRequest):
    """Function 06. The response echoes the request (Modbus v1.1b3, 6.6), so COMMAND reads 0 afterwards
    yet its write is still acknowledged with the value written."""

    function_code = 0x06
    rtu_frame_size = 8

    def parse(self, body: bytes) -> None:
        if len(body) != 4:
            raise ValueError("write single body must be 4 bytes")
        self.address, self.value = struct.unpack(">HH", body)

    async def execute(self, context: RequestContext, device_id: int) -> ModbusPDU:
        code = await context.core.async_setValues(device_id, self.function_code, self.address, [self.value])
        if code:
            return self.refuse(code)
        return WriteSingleRegisterResponse(
            address=self.address, registers=[self.value], dev_id=device_id, transaction_id=self.transaction_id
        )


class WriteMultipleRequest(SimRequest):
    """Function 16: validated whole (count, byte count, payload length) before the store sees it."""

    function_code = 0x10
    rtu_byte_count_pos = 6

    def parse(self, body: bytes) -> None:
        self.address, self.count, self.byte_count = struct.unpack(">HHB", body[:5])
        payload = body[5:]
        self.values: list[int] = []
        self.consistent = self.byte_count == 2 * self.count and len(payload) == self.byte_count
        if self.consistent:
            self.values = [v for (v,) in struct.iter_unpack(">H", payload)]

    async def execute(self, context: RequestContext, device_id: int) -> ModbusPDU:
        if not 1 <= self.count <= MAX_WRITE_COUNT or not self.consistent:
            return self.refuse(ExcCodes.ILLEGAL_VALUE)
        code = await context.core.async_setValues(device_id, self.function_code, self.address, self.values)
        if code:
            return self.refuse(code)
        return WriteMultipleRegistersResponse(
            address=self.address, count=self.count, dev_id=device_id, transaction_id=self.transaction_id
        )


class EncapsulatedInterfaceRequest(SimRequest):
    """Function 43. Only MEI type 14 (read device identification) exists; any other type answers 01.

    `sub_function_code` stays -1 on purpose: DecodePDU swaps any PDU whose sub-function code is
    >= 0 for the class in its process-wide sub-function table (the stock 43/14 class, which
    answers one identity for every unit).
    """

    function_code = 0x2B

    @classmethod
    def calculateRtuFrameSize(cls, data: bytes) -> int:
        return 7 if data[2] == READ_DEVICE_ID_MEI_TYPE else 0

    def parse(self, body: bytes) -> None:
        self.mei_type = body[0]
        self.read_code = self.object_id = -1
        if self.mei_type == READ_DEVICE_ID_MEI_TYPE:
            if len(body) != 3:
                raise ValueError("read device identification body must be 3 bytes")
            self.read_code, self.object_id = body[1], body[2]

    async def execute(self, context: RequestContext, device_id: int) -> ModbusPDU:
        if self.mei_type != READ_DEVICE_ID_MEI_TYPE:
            return self.refuse(ExcCodes.ILLEGAL_FUNCTION)
        if not DeviceInformation.BASIC <= self.read_code <= DeviceInformation.SPECIFIC:
            return self.refuse(ExcCodes.ILLEGAL_VALUE)
        identity = context.identities[device_id]
        objects = {
            OBJECT_VENDOR_NAME: identity.vendor_name.encode("ascii"),
            OBJECT_PRODUCT_CODE: identity.product_code.encode("ascii"),
            OBJECT_REVISION: identity.revision.encode("ascii"),
        }
        if self.read_code == DeviceInformation.SPECIFIC:
            if self.object_id not in objects:
                return self.refuse(ExcCodes.ILLEGAL_ADDRESS)
            chosen = {self.object_id: objects[self.object_id]}
        else:
            # stream access; an unknown start object restarts at object 0 (Modbus v1.1b3, 6.21).
            # Only basic objects exist, so regular and extended streams carry the basic ones.
            start = self.object_id if self.object_id in objects else OBJECT_VENDOR_NAME
            chosen = {oid: value for oid, value in objects.items() if oid >= start}
        response = ReadDeviceInformationResponse(
            read_code=self.read_code, information=chosen, dev_id=device_id, transaction_id=self.transaction_id
        )
        response.conformity = CONFORMITY_BASIC_STREAM_AND_INDIVIDUAL
        return response


SUPPORTED_REQUESTS: tuple[type[SimRequest], ...] = (
    ReadHoldingRequest,
    ReadInputRequest,
    WriteSingleRequest,
    WriteMultipleRequest,
    EncapsulatedInterfaceRequest,
)


def _illegal_function_class(function_code: int) -> type[IllegalFunctionRequest]:
    return cast(
        type[IllegalFunctionRequest],
        type(f"IllegalFunction{function_code:02X}Request", (IllegalFunctionRequest,), {"function_code": function_code}),
    )


def request_classes() -> list[type[ModbusPDU]]:
    """One class for every function code 0..0x80, for the server's `custom_pdu=`."""
    supported = {cls.function_code: cls for cls in SUPPORTED_REQUESTS}
    return [
        supported.get(code) or _illegal_function_class(code) for code in range(MAX_REQUEST_FUNCTION_CODE + 1)
    ]
