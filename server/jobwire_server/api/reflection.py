"""gRPC server reflection as ``grpc.reflection.v1`` (what current grpcurl and Postman ask for) and
``grpc.reflection.v1alpha`` (older tools).

grpcio-reflection implements only v1alpha. The v1 protocol is the same messages in another
package, byte for byte on the wire, so v1 is served by the same servicer under the v1 name, and a
copy of the v1alpha file renamed to v1 goes into the descriptor pool so that tools can describe the
v1 service too.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc import aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def enable_reflection(service_names: Sequence[str], server: aio.Server) -> None:
    """Serve reflection for `service_names` (and both reflection services) on `server`."""
    _add_v1_descriptor()
    names = (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    v1 = grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    })
    server.add_generic_rpc_handlers((v1,))


def _add_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
    except KeyError:
        pass
    else:
        return
    source = reflection_pb2.DESCRIPTOR
    proto = descriptor_pb2.FileDescriptorProto()
    source.CopyToProto(proto)
    old_prefix, new_prefix = f".{source.package}.", f".{V1_PACKAGE}."
    proto.name, proto.package = _V1_FILE, V1_PACKAGE
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old_prefix, new_prefix)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old_prefix, new_prefix)
            method.output_type = method.output_type.replace(old_prefix, new_prefix)
    pool.Add(proto)
