import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CaptureMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPTURE_MODE_UNSPECIFIED: _ClassVar[CaptureMode]
    CAPTURE_MODE_AUTOMATIC: _ClassVar[CaptureMode]
    CAPTURE_MODE_MANUAL: _ClassVar[CaptureMode]

class PaymentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYMENT_STATUS_UNSPECIFIED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_PROCESSING: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_AUTHORIZED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_CAPTURED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_PARTIALLY_REFUNDED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_REFUNDED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_CANCELED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_DECLINED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_FAILED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_REQUIRES_REVIEW: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_DISPUTED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_CHARGED_BACK: _ClassVar[PaymentStatus]

class OperationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_KIND_UNSPECIFIED: _ClassVar[OperationKind]
    OPERATION_KIND_AUTHORIZE: _ClassVar[OperationKind]
    OPERATION_KIND_CAPTURE: _ClassVar[OperationKind]
    OPERATION_KIND_CANCEL: _ClassVar[OperationKind]
    OPERATION_KIND_REFUND: _ClassVar[OperationKind]

class OperationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_STATUS_UNSPECIFIED: _ClassVar[OperationStatus]
    OPERATION_STATUS_PENDING: _ClassVar[OperationStatus]
    OPERATION_STATUS_UNKNOWN: _ClassVar[OperationStatus]
    OPERATION_STATUS_SUCCEEDED: _ClassVar[OperationStatus]
    OPERATION_STATUS_DECLINED: _ClassVar[OperationStatus]
    OPERATION_STATUS_FAILED: _ClassVar[OperationStatus]

class Resolution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOLUTION_UNSPECIFIED: _ClassVar[Resolution]
    RESOLUTION_AUTHORIZED: _ClassVar[Resolution]
    RESOLUTION_CAPTURED: _ClassVar[Resolution]
    RESOLUTION_DECLINED: _ClassVar[Resolution]
    RESOLUTION_NOT_FOUND: _ClassVar[Resolution]
    RESOLUTION_CANCELED: _ClassVar[Resolution]
    RESOLUTION_REFUNDED: _ClassVar[Resolution]
CAPTURE_MODE_UNSPECIFIED: CaptureMode
CAPTURE_MODE_AUTOMATIC: CaptureMode
CAPTURE_MODE_MANUAL: CaptureMode
PAYMENT_STATUS_UNSPECIFIED: PaymentStatus
PAYMENT_STATUS_PROCESSING: PaymentStatus
PAYMENT_STATUS_AUTHORIZED: PaymentStatus
PAYMENT_STATUS_CAPTURED: PaymentStatus
PAYMENT_STATUS_PARTIALLY_REFUNDED: PaymentStatus
PAYMENT_STATUS_REFUNDED: PaymentStatus
PAYMENT_STATUS_CANCELED: PaymentStatus
PAYMENT_STATUS_DECLINED: PaymentStatus
PAYMENT_STATUS_FAILED: PaymentStatus
PAYMENT_STATUS_REQUIRES_REVIEW: PaymentStatus
PAYMENT_STATUS_DISPUTED: PaymentStatus
PAYMENT_STATUS_CHARGED_BACK: PaymentStatus
OPERATION_KIND_UNSPECIFIED: OperationKind
OPERATION_KIND_AUTHORIZE: OperationKind
OPERATION_KIND_CAPTURE: OperationKind
OPERATION_KIND_CANCEL: OperationKind
OPERATION_KIND_REFUND: OperationKind
OPERATION_STATUS_UNSPECIFIED: OperationStatus
OPERATION_STATUS_PENDING: OperationStatus
OPERATION_STATUS_UNKNOWN: OperationStatus
OPERATION_STATUS_SUCCEEDED: OperationStatus
OPERATION_STATUS_DECLINED: OperationStatus
OPERATION_STATUS_FAILED: OperationStatus
RESOLUTION_UNSPECIFIED: Resolution
RESOLUTION_AUTHORIZED: Resolution
RESOLUTION_CAPTURED: Resolution
RESOLUTION_DECLINED: Resolution
RESOLUTION_NOT_FOUND: Resolution
RESOLUTION_CANCELED: Resolution
RESOLUTION_REFUNDED: Resolution

class CreatePaymentRequest(_message.Message):
    __slots__ = ("idempotency_key", "amount", "currency", "payment_method", "region", "capture_mode", "reference", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_METHOD_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_MODE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    amount: int
    currency: str
    payment_method: str
    region: str
    capture_mode: CaptureMode
    reference: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, idempotency_key: _Optional[str] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ..., payment_method: _Optional[str] = ..., region: _Optional[str] = ..., capture_mode: _Optional[_Union[CaptureMode, str]] = ..., reference: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CapturePaymentRequest(_message.Message):
    __slots__ = ("idempotency_key", "payment_id", "amount")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    payment_id: str
    amount: int
    def __init__(self, idempotency_key: _Optional[str] = ..., payment_id: _Optional[str] = ..., amount: _Optional[int] = ...) -> None: ...

class CancelPaymentRequest(_message.Message):
    __slots__ = ("idempotency_key", "payment_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    payment_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., payment_id: _Optional[str] = ...) -> None: ...

class RefundPaymentRequest(_message.Message):
    __slots__ = ("idempotency_key", "payment_id", "amount", "reason")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    payment_id: str
    amount: int
    reason: str
    def __init__(self, idempotency_key: _Optional[str] = ..., payment_id: _Optional[str] = ..., amount: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ResolvePaymentRequest(_message.Message):
    __slots__ = ("idempotency_key", "payment_id", "outcome", "note", "operation", "provider_reference")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    payment_id: str
    outcome: Resolution
    note: str
    operation: int
    provider_reference: str
    def __init__(self, idempotency_key: _Optional[str] = ..., payment_id: _Optional[str] = ..., outcome: _Optional[_Union[Resolution, str]] = ..., note: _Optional[str] = ..., operation: _Optional[int] = ..., provider_reference: _Optional[str] = ...) -> None: ...

class GetPaymentRequest(_message.Message):
    __slots__ = ("payment_id",)
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    def __init__(self, payment_id: _Optional[str] = ...) -> None: ...

class ListPaymentEventsRequest(_message.Message):
    __slots__ = ("payment_id",)
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    def __init__(self, payment_id: _Optional[str] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("sequence", "kind", "status", "amount", "provider", "provider_key", "attempt", "provider_reference", "decline_code", "failure_message", "lookups", "review_required")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DECLINE_CODE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    REVIEW_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    kind: OperationKind
    status: OperationStatus
    amount: int
    provider: str
    provider_key: str
    attempt: int
    provider_reference: str
    decline_code: str
    failure_message: str
    lookups: int
    review_required: bool
    def __init__(self, sequence: _Optional[int] = ..., kind: _Optional[_Union[OperationKind, str]] = ..., status: _Optional[_Union[OperationStatus, str]] = ..., amount: _Optional[int] = ..., provider: _Optional[str] = ..., provider_key: _Optional[str] = ..., attempt: _Optional[int] = ..., provider_reference: _Optional[str] = ..., decline_code: _Optional[str] = ..., failure_message: _Optional[str] = ..., lookups: _Optional[int] = ..., review_required: _Optional[bool] = ...) -> None: ...

class Payment(_message.Message):
    __slots__ = ("payment_id", "status", "amount", "currency", "captured_amount", "refunded_amount", "region", "provider", "provider_reference", "reference", "decline_code", "failure_message", "metadata", "version", "created_at", "updated_at", "capture_mode", "operations", "charged_back_amount")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DECLINE_CODE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_MODE_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    CHARGED_BACK_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    status: PaymentStatus
    amount: int
    currency: str
    captured_amount: int
    refunded_amount: int
    region: str
    provider: str
    provider_reference: str
    reference: str
    decline_code: str
    failure_message: str
    metadata: _containers.ScalarMap[str, str]
    version: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    capture_mode: CaptureMode
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    charged_back_amount: int
    def __init__(self, payment_id: _Optional[str] = ..., status: _Optional[_Union[PaymentStatus, str]] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ..., captured_amount: _Optional[int] = ..., refunded_amount: _Optional[int] = ..., region: _Optional[str] = ..., provider: _Optional[str] = ..., provider_reference: _Optional[str] = ..., reference: _Optional[str] = ..., decline_code: _Optional[str] = ..., failure_message: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., capture_mode: _Optional[_Union[CaptureMode, str]] = ..., operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., charged_back_amount: _Optional[int] = ...) -> None: ...

class PaymentEvent(_message.Message):
    __slots__ = ("version", "type", "time", "data")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    version: int
    type: str
    time: _timestamp_pb2.Timestamp
    data: str
    def __init__(self, version: _Optional[int] = ..., type: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., data: _Optional[str] = ...) -> None: ...

class ListPaymentEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[PaymentEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[PaymentEvent, _Mapping]]] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("after_position", "follow")
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    after_position: int
    follow: bool
    def __init__(self, after_position: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class StreamedEvent(_message.Message):
    __slots__ = ("position", "payment_id", "event")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    position: int
    payment_id: str
    event: PaymentEvent
    def __init__(self, position: _Optional[int] = ..., payment_id: _Optional[str] = ..., event: _Optional[_Union[PaymentEvent, _Mapping]] = ...) -> None: ...

class ListPaymentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "reference", "status", "provider", "region", "created_after", "created_before")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    reference: str
    status: PaymentStatus
    provider: str
    region: str
    created_after: _timestamp_pb2.Timestamp
    created_before: _timestamp_pb2.Timestamp
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., reference: _Optional[str] = ..., status: _Optional[_Union[PaymentStatus, str]] = ..., provider: _Optional[str] = ..., region: _Optional[str] = ..., created_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PaymentSummary(_message.Message):
    __slots__ = ("payment_id", "status", "amount", "currency", "region", "provider", "reference", "version", "created_at", "updated_at")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    status: PaymentStatus
    amount: int
    currency: str
    region: str
    provider: str
    reference: str
    version: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, payment_id: _Optional[str] = ..., status: _Optional[_Union[PaymentStatus, str]] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ..., region: _Optional[str] = ..., provider: _Optional[str] = ..., reference: _Optional[str] = ..., version: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListPaymentsResponse(_message.Message):
    __slots__ = ("payments", "next_page_token")
    PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    payments: _containers.RepeatedCompositeFieldContainer[PaymentSummary]
    next_page_token: str
    def __init__(self, payments: _Optional[_Iterable[_Union[PaymentSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
