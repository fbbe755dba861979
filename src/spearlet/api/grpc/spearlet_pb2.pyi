import datetime

from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InvocationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVOCATION_TYPE_UNKNOWN: _ClassVar[InvocationType]
    INVOCATION_TYPE_NEW_TASK: _ClassVar[InvocationType]
    INVOCATION_TYPE_EXISTING_TASK: _ClassVar[InvocationType]

class ExecutionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_MODE_UNKNOWN: _ClassVar[ExecutionMode]
    EXECUTION_MODE_SYNC: _ClassVar[ExecutionMode]
    EXECUTION_MODE_ASYNC: _ClassVar[ExecutionMode]
    EXECUTION_MODE_STREAM: _ClassVar[ExecutionMode]

class ExecutionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_STATUS_UNKNOWN: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_PENDING: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_RUNNING: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_COMPLETED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_FAILED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_CANCELLED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_TIMEOUT: _ClassVar[ExecutionStatus]
INVOCATION_TYPE_UNKNOWN: InvocationType
INVOCATION_TYPE_NEW_TASK: InvocationType
INVOCATION_TYPE_EXISTING_TASK: InvocationType
EXECUTION_MODE_UNKNOWN: ExecutionMode
EXECUTION_MODE_SYNC: ExecutionMode
EXECUTION_MODE_ASYNC: ExecutionMode
EXECUTION_MODE_STREAM: ExecutionMode
EXECUTION_STATUS_UNKNOWN: ExecutionStatus
EXECUTION_STATUS_PENDING: ExecutionStatus
EXECUTION_STATUS_RUNNING: ExecutionStatus
EXECUTION_STATUS_COMPLETED: ExecutionStatus
EXECUTION_STATUS_FAILED: ExecutionStatus
EXECUTION_STATUS_CANCELLED: ExecutionStatus
EXECUTION_STATUS_TIMEOUT: ExecutionStatus

class ArtifactSpec(_message.Message):
    __slots__ = ("artifact_id", "artifact_type", "location", "version", "checksum", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_TYPE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    artifact_type: str
    location: str
    version: str
    checksum: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, artifact_id: _Optional[str] = ..., artifact_type: _Optional[str] = ..., location: _Optional[str] = ..., version: _Optional[str] = ..., checksum: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FunctionParameter(_message.Message):
    __slots__ = ("name", "type", "value", "required", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    value: _any_pb2.Any
    required: bool
    description: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., value: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., required: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class ExecutionContext(_message.Message):
    __slots__ = ("execution_id", "session_id", "user_id", "environment", "headers", "timeout_ms", "max_retries")
    class EnvironmentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    session_id: str
    user_id: str
    environment: _containers.ScalarMap[str, str]
    headers: _containers.ScalarMap[str, str]
    timeout_ms: int
    max_retries: int
    def __init__(self, execution_id: _Optional[str] = ..., session_id: _Optional[str] = ..., user_id: _Optional[str] = ..., environment: _Optional[_Mapping[str, str]] = ..., headers: _Optional[_Mapping[str, str]] = ..., timeout_ms: _Optional[int] = ..., max_retries: _Optional[int] = ...) -> None: ...

class ExecutionResult(_message.Message):
    __slots__ = ("status", "result", "error_message", "error_code", "execution_time_ms", "memory_used_bytes", "metrics", "started_at", "completed_at")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    status: ExecutionStatus
    result: _any_pb2.Any
    error_message: str
    error_code: str
    execution_time_ms: int
    memory_used_bytes: int
    metrics: _containers.ScalarMap[str, str]
    started_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    def __init__(self, status: _Optional[_Union[ExecutionStatus, str]] = ..., result: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., error_message: _Optional[str] = ..., error_code: _Optional[str] = ..., execution_time_ms: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., metrics: _Optional[_Mapping[str, str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InvokeFunctionRequest(_message.Message):
    __slots__ = ("invocation_type", "task_name", "task_description", "artifact_spec", "task_id", "function_name", "parameters", "execution_mode", "context", "create_if_not_exists", "force_new_instance", "invocation_metadata", "wait")
    class InvocationMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INVOCATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SPEC_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_MODE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CREATE_IF_NOT_EXISTS_FIELD_NUMBER: _ClassVar[int]
    FORCE_NEW_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_METADATA_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    invocation_type: InvocationType
    task_name: str
    task_description: str
    artifact_spec: ArtifactSpec
    task_id: str
    function_name: str
    parameters: _containers.RepeatedCompositeFieldContainer[FunctionParameter]
    execution_mode: ExecutionMode
    context: ExecutionContext
    create_if_not_exists: bool
    force_new_instance: bool
    invocation_metadata: _containers.ScalarMap[str, str]
    wait: bool
    def __init__(self, invocation_type: _Optional[_Union[InvocationType, str]] = ..., task_name: _Optional[str] = ..., task_description: _Optional[str] = ..., artifact_spec: _Optional[_Union[ArtifactSpec, _Mapping]] = ..., task_id: _Optional[str] = ..., function_name: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[FunctionParameter, _Mapping]]] = ..., execution_mode: _Optional[_Union[ExecutionMode, str]] = ..., context: _Optional[_Union[ExecutionContext, _Mapping]] = ..., create_if_not_exists: _Optional[bool] = ..., force_new_instance: _Optional[bool] = ..., invocation_metadata: _Optional[_Mapping[str, str]] = ..., wait: _Optional[bool] = ...) -> None: ...

class InvokeFunctionResponse(_message.Message):
    __slots__ = ("success", "message", "execution_id", "task_id", "instance_id", "result", "status_endpoint", "estimated_completion_ms")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STATUS_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COMPLETION_MS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    execution_id: str
    task_id: str
    instance_id: str
    result: ExecutionResult
    status_endpoint: str
    estimated_completion_ms: int
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., execution_id: _Optional[str] = ..., task_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., result: _Optional[_Union[ExecutionResult, _Mapping]] = ..., status_endpoint: _Optional[str] = ..., estimated_completion_ms: _Optional[int] = ...) -> None: ...

class GetExecutionStatusRequest(_message.Message):
    __slots__ = ("execution_id", "include_result", "include_logs")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_RESULT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_LOGS_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    include_result: bool
    include_logs: bool
    def __init__(self, execution_id: _Optional[str] = ..., include_result: _Optional[bool] = ..., include_logs: _Optional[bool] = ...) -> None: ...

class GetExecutionStatusResponse(_message.Message):
    __slots__ = ("found", "result", "logs", "message")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    result: ExecutionResult
    logs: _containers.RepeatedScalarFieldContainer[str]
    message: str
    def __init__(self, found: _Optional[bool] = ..., result: _Optional[_Union[ExecutionResult, _Mapping]] = ..., logs: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ...) -> None: ...

class CancelExecutionRequest(_message.Message):
    __slots__ = ("execution_id", "reason", "force")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    reason: str
    force: bool
    def __init__(self, execution_id: _Optional[str] = ..., reason: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class CancelExecutionResponse(_message.Message):
    __slots__ = ("success", "message", "final_status")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FINAL_STATUS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    final_status: ExecutionStatus
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., final_status: _Optional[_Union[ExecutionStatus, str]] = ...) -> None: ...

class StreamExecutionResult(_message.Message):
    __slots__ = ("execution_id", "status", "chunk_data", "is_final", "error_message", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_DATA_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    status: ExecutionStatus
    chunk_data: _any_pb2.Any
    is_final: bool
    error_message: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, execution_id: _Optional[str] = ..., status: _Optional[_Union[ExecutionStatus, str]] = ..., chunk_data: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., is_final: _Optional[bool] = ..., error_message: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("task_id", "task_name", "artifact_spec", "created_at", "updated_at", "execution_count", "last_status", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task_name: str
    artifact_spec: ArtifactSpec
    created_at: int
    updated_at: int
    execution_count: int
    last_status: ExecutionStatus
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, task_id: _Optional[str] = ..., task_name: _Optional[str] = ..., artifact_spec: _Optional[_Union[ArtifactSpec, _Mapping]] = ..., created_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., execution_count: _Optional[int] = ..., last_status: _Optional[_Union[ExecutionStatus, str]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("prefix", "limit", "start_after", "include_details")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DETAILS_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    limit: int
    start_after: str
    include_details: bool
    def __init__(self, prefix: _Optional[str] = ..., limit: _Optional[int] = ..., start_after: _Optional[str] = ..., include_details: _Optional[bool] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "has_more", "next_start_after")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    NEXT_START_AFTER_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    has_more: bool
    next_start_after: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., has_more: _Optional[bool] = ..., next_start_after: _Optional[str] = ...) -> None: ...

class ExecutionInfo(_message.Message):
    __slots__ = ("execution_id", "task_id", "function_name", "execution_mode", "status", "started_at", "completed_at", "execution_time_ms", "memory_used_bytes", "error_message", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_MODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    task_id: str
    function_name: str
    execution_mode: ExecutionMode
    status: ExecutionStatus
    started_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    execution_time_ms: int
    memory_used_bytes: int
    error_message: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, execution_id: _Optional[str] = ..., task_id: _Optional[str] = ..., function_name: _Optional[str] = ..., execution_mode: _Optional[_Union[ExecutionMode, str]] = ..., status: _Optional[_Union[ExecutionStatus, str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., execution_time_ms: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., error_message: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id", "include_executions", "execution_limit")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_LIMIT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    include_executions: bool
    execution_limit: int
    def __init__(self, task_id: _Optional[str] = ..., include_executions: _Optional[bool] = ..., execution_limit: _Optional[int] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("found", "task", "executions", "message")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    task: TaskInfo
    executions: _containers.RepeatedCompositeFieldContainer[ExecutionInfo]
    message: str
    def __init__(self, found: _Optional[bool] = ..., task: _Optional[_Union[TaskInfo, _Mapping]] = ..., executions: _Optional[_Iterable[_Union[ExecutionInfo, _Mapping]]] = ..., message: _Optional[str] = ...) -> None: ...

class DeleteTaskRequest(_message.Message):
    __slots__ = ("task_id", "force", "cleanup_executions")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    CLEANUP_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    force: bool
    cleanup_executions: bool
    def __init__(self, task_id: _Optional[str] = ..., force: _Optional[bool] = ..., cleanup_executions: _Optional[bool] = ...) -> None: ...

class DeleteTaskResponse(_message.Message):
    __slots__ = ("success", "message", "deleted", "cleaned_executions")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    CLEANED_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    deleted: bool
    cleaned_executions: int
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., deleted: _Optional[bool] = ..., cleaned_executions: _Optional[int] = ...) -> None: ...

class ListExecutionsRequest(_message.Message):
    __slots__ = ("task_id", "limit", "start_after", "status_filter")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FILTER_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    limit: int
    start_after: str
    status_filter: ExecutionStatus
    def __init__(self, task_id: _Optional[str] = ..., limit: _Optional[int] = ..., start_after: _Optional[str] = ..., status_filter: _Optional[_Union[ExecutionStatus, str]] = ...) -> None: ...

class ListExecutionsResponse(_message.Message):
    __slots__ = ("executions", "has_more", "next_start_after")
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    NEXT_START_AFTER_FIELD_NUMBER: _ClassVar[int]
    executions: _containers.RepeatedCompositeFieldContainer[ExecutionInfo]
    has_more: bool
    next_start_after: str
    def __init__(self, executions: _Optional[_Iterable[_Union[ExecutionInfo, _Mapping]]] = ..., has_more: _Optional[bool] = ..., next_start_after: _Optional[str] = ...) -> None: ...

class GetHealthRequest(_message.Message):
    __slots__ = ("include_details",)
    INCLUDE_DETAILS_FIELD_NUMBER: _ClassVar[int]
    include_details: bool
    def __init__(self, include_details: _Optional[bool] = ...) -> None: ...

class HealthDetails(_message.Message):
    __slots__ = ("active_tasks", "running_executions", "pending_executions", "total_memory_used", "total_executions", "system_info")
    class SystemInfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACTIVE_TASKS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    PENDING_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_INFO_FIELD_NUMBER: _ClassVar[int]
    active_tasks: int
    running_executions: int
    pending_executions: int
    total_memory_used: int
    total_executions: int
    system_info: _containers.ScalarMap[str, str]
    def __init__(self, active_tasks: _Optional[int] = ..., running_executions: _Optional[int] = ..., pending_executions: _Optional[int] = ..., total_memory_used: _Optional[int] = ..., total_executions: _Optional[int] = ..., system_info: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetHealthResponse(_message.Message):
    __slots__ = ("status", "message", "uptime_seconds", "details")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    status: str
    message: str
    uptime_seconds: int
    details: HealthDetails
    def __init__(self, status: _Optional[str] = ..., message: _Optional[str] = ..., uptime_seconds: _Optional[int] = ..., details: _Optional[_Union[HealthDetails, _Mapping]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("include_task_stats", "include_execution_stats", "time_range_hours")
    INCLUDE_TASK_STATS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EXECUTION_STATS_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_HOURS_FIELD_NUMBER: _ClassVar[int]
    include_task_stats: bool
    include_execution_stats: bool
    time_range_hours: int
    def __init__(self, include_task_stats: _Optional[bool] = ..., include_execution_stats: _Optional[bool] = ..., time_range_hours: _Optional[int] = ...) -> None: ...

class ServiceStats(_message.Message):
    __slots__ = ("uptime_seconds", "total_tasks", "total_executions", "total_memory_used", "cpu_usage_percent", "memory_usage_percent")
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TASKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMORY_USED_FIELD_NUMBER: _ClassVar[int]
    CPU_USAGE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USAGE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    uptime_seconds: int
    total_tasks: int
    total_executions: int
    total_memory_used: int
    cpu_usage_percent: float
    memory_usage_percent: float
    def __init__(self, uptime_seconds: _Optional[int] = ..., total_tasks: _Optional[int] = ..., total_executions: _Optional[int] = ..., total_memory_used: _Optional[int] = ..., cpu_usage_percent: _Optional[float] = ..., memory_usage_percent: _Optional[float] = ...) -> None: ...

class TaskStats(_message.Message):
    __slots__ = ("active_tasks", "idle_tasks", "tasks_by_type", "most_active_tasks")
    class TasksByTypeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ACTIVE_TASKS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TASKS_FIELD_NUMBER: _ClassVar[int]
    TASKS_BY_TYPE_FIELD_NUMBER: _ClassVar[int]
    MOST_ACTIVE_TASKS_FIELD_NUMBER: _ClassVar[int]
    active_tasks: int
    idle_tasks: int
    tasks_by_type: _containers.ScalarMap[str, int]
    most_active_tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    def __init__(self, active_tasks: _Optional[int] = ..., idle_tasks: _Optional[int] = ..., tasks_by_type: _Optional[_Mapping[str, int]] = ..., most_active_tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ...) -> None: ...

class ExecutionStats(_message.Message):
    __slots__ = ("running_executions", "pending_executions", "completed_executions", "failed_executions", "average_execution_time_ms", "success_rate_percent", "executions_by_function")
    class ExecutionsByFunctionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RUNNING_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    PENDING_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    FAILED_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_EXECUTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONS_BY_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    running_executions: int
    pending_executions: int
    completed_executions: int
    failed_executions: int
    average_execution_time_ms: float
    success_rate_percent: float
    executions_by_function: _containers.ScalarMap[str, int]
    def __init__(self, running_executions: _Optional[int] = ..., pending_executions: _Optional[int] = ..., completed_executions: _Optional[int] = ..., failed_executions: _Optional[int] = ..., average_execution_time_ms: _Optional[float] = ..., success_rate_percent: _Optional[float] = ..., executions_by_function: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("service_stats", "task_stats", "execution_stats")
    SERVICE_STATS_FIELD_NUMBER: _ClassVar[int]
    TASK_STATS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_STATS_FIELD_NUMBER: _ClassVar[int]
    service_stats: ServiceStats
    task_stats: TaskStats
    execution_stats: ExecutionStats
    def __init__(self, service_stats: _Optional[_Union[ServiceStats, _Mapping]] = ..., task_stats: _Optional[_Union[TaskStats, _Mapping]] = ..., execution_stats: _Optional[_Union[ExecutionStats, _Mapping]] = ...) -> None: ...

class RegisterTaskRequest(_message.Message):
    __slots__ = ("task_name", "task_description", "artifact_spec", "replace")
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SPEC_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    task_name: str
    task_description: str
    artifact_spec: ArtifactSpec
    replace: bool
    def __init__(self, task_name: _Optional[str] = ..., task_description: _Optional[str] = ..., artifact_spec: _Optional[_Union[ArtifactSpec, _Mapping]] = ..., replace: _Optional[bool] = ...) -> None: ...

class RegisterTaskResponse(_message.Message):
    __slots__ = ("task", "created")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    task: TaskInfo
    created: bool
    def __init__(self, task: _Optional[_Union[TaskInfo, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class WatchExecutionRequest(_message.Message):
    __slots__ = ("execution_id",)
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    def __init__(self, execution_id: _Optional[str] = ...) -> None: ...
