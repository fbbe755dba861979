from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATUS_UNKNOWN: _ClassVar[TaskStatus]
    TASK_STATUS_REGISTERED: _ClassVar[TaskStatus]
    TASK_STATUS_ACTIVE: _ClassVar[TaskStatus]
    TASK_STATUS_INACTIVE: _ClassVar[TaskStatus]

class TaskPriority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_PRIORITY_UNKNOWN: _ClassVar[TaskPriority]
    TASK_PRIORITY_LOW: _ClassVar[TaskPriority]
    TASK_PRIORITY_NORMAL: _ClassVar[TaskPriority]
    TASK_PRIORITY_HIGH: _ClassVar[TaskPriority]
    TASK_PRIORITY_URGENT: _ClassVar[TaskPriority]

class ExecutableType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTABLE_TYPE_UNKNOWN: _ClassVar[ExecutableType]
    EXECUTABLE_TYPE_BINARY: _ClassVar[ExecutableType]
    EXECUTABLE_TYPE_SCRIPT: _ClassVar[ExecutableType]
    EXECUTABLE_TYPE_CONTAINER: _ClassVar[ExecutableType]
    EXECUTABLE_TYPE_WASM: _ClassVar[ExecutableType]
    EXECUTABLE_TYPE_PROCESS: _ClassVar[ExecutableType]

class ExecutionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_STATUS_UNKNOWN: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_PENDING: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_RUNNING: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_COMPLETED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_FAILED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_CANCELLED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_TIMEOUT: _ClassVar[ExecutionStatus]

class InstanceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTANCE_STATUS_UNKNOWN: _ClassVar[InstanceStatus]
    INSTANCE_STATUS_RUNNING: _ClassVar[InstanceStatus]
    INSTANCE_STATUS_IDLE: _ClassVar[InstanceStatus]
    INSTANCE_STATUS_TERMINATING: _ClassVar[InstanceStatus]
    INSTANCE_STATUS_TERMINATED: _ClassVar[InstanceStatus]
TASK_STATUS_UNKNOWN: TaskStatus
TASK_STATUS_REGISTERED: TaskStatus
TASK_STATUS_ACTIVE: TaskStatus
TASK_STATUS_INACTIVE: TaskStatus
TASK_PRIORITY_UNKNOWN: TaskPriority
TASK_PRIORITY_LOW: TaskPriority
TASK_PRIORITY_NORMAL: TaskPriority
TASK_PRIORITY_HIGH: TaskPriority
TASK_PRIORITY_URGENT: TaskPriority
EXECUTABLE_TYPE_UNKNOWN: ExecutableType
EXECUTABLE_TYPE_BINARY: ExecutableType
EXECUTABLE_TYPE_SCRIPT: ExecutableType
EXECUTABLE_TYPE_CONTAINER: ExecutableType
EXECUTABLE_TYPE_WASM: ExecutableType
EXECUTABLE_TYPE_PROCESS: ExecutableType
EXECUTION_STATUS_UNKNOWN: ExecutionStatus
EXECUTION_STATUS_PENDING: ExecutionStatus
EXECUTION_STATUS_RUNNING: ExecutionStatus
EXECUTION_STATUS_COMPLETED: ExecutionStatus
EXECUTION_STATUS_FAILED: ExecutionStatus
EXECUTION_STATUS_CANCELLED: ExecutionStatus
EXECUTION_STATUS_TIMEOUT: ExecutionStatus
INSTANCE_STATUS_UNKNOWN: InstanceStatus
INSTANCE_STATUS_RUNNING: InstanceStatus
INSTANCE_STATUS_IDLE: InstanceStatus
INSTANCE_STATUS_TERMINATING: InstanceStatus
INSTANCE_STATUS_TERMINATED: InstanceStatus

class Node(_message.Message):
    __slots__ = ("uuid", "ip_address", "port", "status", "last_heartbeat", "registered_at", "metadata", "http_port")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UUID_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    ip_address: str
    port: int
    status: str
    last_heartbeat: int
    registered_at: int
    metadata: _containers.ScalarMap[str, str]
    http_port: int
    def __init__(self, uuid: _Optional[str] = ..., ip_address: _Optional[str] = ..., port: _Optional[int] = ..., status: _Optional[str] = ..., last_heartbeat: _Optional[int] = ..., registered_at: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., http_port: _Optional[int] = ...) -> None: ...

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: Node
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ...) -> None: ...

class RegisterNodeResponse(_message.Message):
    __slots__ = ("success", "message", "node_uuid")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NODE_UUID_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    node_uuid: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., node_uuid: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("uuid", "timestamp", "health_info")
    class HealthInfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UUID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    HEALTH_INFO_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    timestamp: int
    health_info: _containers.ScalarMap[str, str]
    def __init__(self, uuid: _Optional[str] = ..., timestamp: _Optional[int] = ..., health_info: _Optional[_Mapping[str, str]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("success", "message", "server_timestamp")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    server_timestamp: int
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., server_timestamp: _Optional[int] = ...) -> None: ...

class NodeResource(_message.Message):
    __slots__ = ("node_uuid", "cpu_usage_percent", "memory_usage_percent", "total_memory_bytes", "used_memory_bytes", "available_memory_bytes", "disk_usage_percent", "total_disk_bytes", "used_disk_bytes", "network_rx_bytes_per_sec", "network_tx_bytes_per_sec", "load_average_1m", "load_average_5m", "load_average_15m", "updated_at", "resource_metadata")
    class ResourceMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_UUID_FIELD_NUMBER: _ClassVar[int]
    CPU_USAGE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USAGE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_USAGE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_RX_BYTES_PER_SEC_FIELD_NUMBER: _ClassVar[int]
    NETWORK_TX_BYTES_PER_SEC_FIELD_NUMBER: _ClassVar[int]
    LOAD_AVERAGE_1M_FIELD_NUMBER: _ClassVar[int]
    LOAD_AVERAGE_5M_FIELD_NUMBER: _ClassVar[int]
    LOAD_AVERAGE_15M_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_METADATA_FIELD_NUMBER: _ClassVar[int]
    node_uuid: str
    cpu_usage_percent: float
    memory_usage_percent: float
    total_memory_bytes: int
    used_memory_bytes: int
    available_memory_bytes: int
    disk_usage_percent: float
    total_disk_bytes: int
    used_disk_bytes: int
    network_rx_bytes_per_sec: int
    network_tx_bytes_per_sec: int
    load_average_1m: float
    load_average_5m: float
    load_average_15m: float
    updated_at: int
    resource_metadata: _containers.ScalarMap[str, str]
    def __init__(self, node_uuid: _Optional[str] = ..., cpu_usage_percent: _Optional[float] = ..., memory_usage_percent: _Optional[float] = ..., total_memory_bytes: _Optional[int] = ..., used_memory_bytes: _Optional[int] = ..., available_memory_bytes: _Optional[int] = ..., disk_usage_percent: _Optional[float] = ..., total_disk_bytes: _Optional[int] = ..., used_disk_bytes: _Optional[int] = ..., network_rx_bytes_per_sec: _Optional[int] = ..., network_tx_bytes_per_sec: _Optional[int] = ..., load_average_1m: _Optional[float] = ..., load_average_5m: _Optional[float] = ..., load_average_15m: _Optional[float] = ..., updated_at: _Optional[int] = ..., resource_metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpdateNodeResourceRequest(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: NodeResource
    def __init__(self, resource: _Optional[_Union[NodeResource, _Mapping]] = ...) -> None: ...

class UpdateNodeResourceResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class TaskExecutable(_message.Message):
    __slots__ = ("type", "uri", "name", "checksum_sha256", "args", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    type: ExecutableType
    uri: str
    name: str
    checksum_sha256: str
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    def __init__(self, type: _Optional[_Union[ExecutableType, str]] = ..., uri: _Optional[str] = ..., name: _Optional[str] = ..., checksum_sha256: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "name", "description", "status", "priority", "node_uuid", "endpoint", "version", "capabilities", "registered_at", "last_heartbeat", "metadata", "config", "executable", "result_uris", "last_result_uri", "last_result_status", "last_completed_at", "last_result_metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LastResultMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    NODE_UUID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    RESULT_URIS_FIELD_NUMBER: _ClassVar[int]
    LAST_RESULT_URI_FIELD_NUMBER: _ClassVar[int]
    LAST_RESULT_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_RESULT_METADATA_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    name: str
    description: str
    status: TaskStatus
    priority: TaskPriority
    node_uuid: str
    endpoint: str
    version: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    registered_at: int
    last_heartbeat: int
    metadata: _containers.ScalarMap[str, str]
    config: _containers.ScalarMap[str, str]
    executable: TaskExecutable
    result_uris: _containers.RepeatedScalarFieldContainer[str]
    last_result_uri: str
    last_result_status: str
    last_completed_at: int
    last_result_metadata: _containers.ScalarMap[str, str]
    def __init__(self, task_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., priority: _Optional[_Union[TaskPriority, str]] = ..., node_uuid: _Optional[str] = ..., endpoint: _Optional[str] = ..., version: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., registered_at: _Optional[int] = ..., last_heartbeat: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., config: _Optional[_Mapping[str, str]] = ..., executable: _Optional[_Union[TaskExecutable, _Mapping]] = ..., result_uris: _Optional[_Iterable[str]] = ..., last_result_uri: _Optional[str] = ..., last_result_status: _Optional[str] = ..., last_completed_at: _Optional[int] = ..., last_result_metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("found", "task")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    found: bool
    task: Task
    def __init__(self, found: _Optional[bool] = ..., task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class LogRef(_message.Message):
    __slots__ = ("backend", "uri_prefix", "content_type", "compression")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    URI_PREFIX_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    backend: str
    uri_prefix: str
    content_type: str
    compression: str
    def __init__(self, backend: _Optional[str] = ..., uri_prefix: _Optional[str] = ..., content_type: _Optional[str] = ..., compression: _Optional[str] = ...) -> None: ...

class Execution(_message.Message):
    __slots__ = ("execution_id", "invocation_id", "task_id", "function_name", "node_uuid", "instance_id", "status", "started_at_ms", "completed_at_ms", "log_ref", "metadata", "updated_at_ms")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_UUID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LOG_REF_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    invocation_id: str
    task_id: str
    function_name: str
    node_uuid: str
    instance_id: str
    status: ExecutionStatus
    started_at_ms: int
    completed_at_ms: int
    log_ref: LogRef
    metadata: _containers.ScalarMap[str, str]
    updated_at_ms: int
    def __init__(self, execution_id: _Optional[str] = ..., invocation_id: _Optional[str] = ..., task_id: _Optional[str] = ..., function_name: _Optional[str] = ..., node_uuid: _Optional[str] = ..., instance_id: _Optional[str] = ..., status: _Optional[_Union[ExecutionStatus, str]] = ..., started_at_ms: _Optional[int] = ..., completed_at_ms: _Optional[int] = ..., log_ref: _Optional[_Union[LogRef, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class ReportExecutionResponse(_message.Message):
    __slots__ = ("accepted", "stored_updated_at_ms")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    STORED_UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    stored_updated_at_ms: int
    def __init__(self, accepted: _Optional[bool] = ..., stored_updated_at_ms: _Optional[int] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("instance_id", "task_id", "node_uuid", "status", "created_at_ms", "updated_at_ms", "last_seen_ms", "current_execution_id", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_UUID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    task_id: str
    node_uuid: str
    status: InstanceStatus
    created_at_ms: int
    updated_at_ms: int
    last_seen_ms: int
    current_execution_id: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, instance_id: _Optional[str] = ..., task_id: _Optional[str] = ..., node_uuid: _Optional[str] = ..., status: _Optional[_Union[InstanceStatus, str]] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., last_seen_ms: _Optional[int] = ..., current_execution_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ReportInstanceResponse(_message.Message):
    __slots__ = ("accepted", "stored_updated_at_ms")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    STORED_UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    stored_updated_at_ms: int
    def __init__(self, accepted: _Optional[bool] = ..., stored_updated_at_ms: _Optional[int] = ...) -> None: ...
