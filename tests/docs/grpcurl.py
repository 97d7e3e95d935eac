"""A stand-in for the parts of `grpcurl` that the docs use, for the docs tests.

grpcurl is not installable from the registries this project builds from, so the docs tests put this
on PATH under that name. Like grpcurl it learns the schema from the server through reflection (here
``grpc.reflection.v1``), reads the request as proto3 JSON and prints responses as proto3 JSON with
camelCase names, so a documented request that names a wrong field or enum fails here as it would there.

    grpcurl -plaintext [-d JSON] HOST:PORT SERVICE/METHOD
    grpcurl -plaintext HOST:PORT list
    grpcurl -plaintext HOST:PORT describe SYMBOL

An RPC error is printed as grpcurl prints it (``ERROR:``, ``Code:``, ``Message:``) and exits with
64 + the status code, as grpcurl does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from grpc_reflection.v1alpha import reflection_pb2

REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


class Reflection:
    """Loads the files that define a symbol, and everything they import, into a private pool."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._info = channel.stream_stream(REFLECTION_V1,
                                           request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                           response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        self.pool = descriptor_pool.DescriptorPool()
        self._loaded: set[str] = set()

    def _ask(self, request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
        (response,) = list(self._info(iter([request]), timeout=10))
        if response.HasField("error_response"):
            raise LookupError(response.error_response.error_message)
        return response

    def services(self) -> list[str]:
        response = self._ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        return sorted(s.name for s in response.list_services_response.service)

    def load_symbol(self, symbol: str) -> None:
        response = self._ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        self._add_files(response.file_descriptor_response.file_descriptor_proto)

    def _add_files(self, raw_files: Iterator[bytes] | list[bytes]) -> None:
        files = {f.name: f for f in map(descriptor_pb2.FileDescriptorProto.FromString, raw_files)}
        for name in files:
            self._add(name, files)

    def _add(self, name: str, files: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        if name in self._loaded:
            return
        proto = files.get(name)
        if proto is None:
            response = self._ask(reflection_pb2.ServerReflectionRequest(file_by_filename=name))
            files.update({f.name: f for f in map(descriptor_pb2.FileDescriptorProto.FromString,
                                                 response.file_descriptor_response.file_descriptor_proto)})
            proto = files[name]
        for dependency in proto.dependency:
            self._add(dependency, files)
        self.pool.Add(proto)
        self._loaded.add(name)


def _describe(reflection: Reflection, symbol: str) -> str:
    reflection.load_symbol(symbol)
    try:
        service: ServiceDescriptor = reflection.pool.FindServiceByName(symbol)
    except KeyError:
        message: Descriptor = reflection.pool.FindMessageTypeByName(symbol)
        fields = "\n".join(f"  {f.name} = {f.number};" for f in message.fields)
        return f"{symbol} is a message:\nmessage {message.name} {{\n{fields}\n}}"
    methods = "\n".join(f"  rpc {m.name} ( .{m.input_type.full_name} ) returns ( .{m.output_type.full_name} );"
                        for m in service.methods)
    return f"{symbol} is a service:\nservice {service.name} {{\n{methods}\n}}"


def _call(channel: grpc.Channel, reflection: Reflection, method_path: str, data: str) -> int:
    service_name, _, method_name = method_path.replace("/", ".").rpartition(".")
    reflection.load_symbol(service_name)
    method = reflection.pool.FindServiceByName(service_name).methods_by_name[method_name]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    request = json_format.Parse(data or "{}", request_class())
    path = f"/{service_name}/{method_name}"
    kwargs = {"request_serializer": request_class.SerializeToString,
              "response_deserializer": response_class.FromString}
    try:
        if method.server_streaming:
            for response in channel.unary_stream(path, **kwargs)(request):
                print(json_format.MessageToJson(response, indent=2), flush=True)
        else:
            print(json_format.MessageToJson(channel.unary_unary(path, **kwargs)(request), indent=2))
    except grpc.RpcError as exc:
        code = exc.code()
        print(f"ERROR:\n  Code: {code.name}\n  Message: {exc.details()}", file=sys.stderr)
        return 64 + int(code.value[0])
    return 0


def main(argv: list[str]) -> int:
    data = ""
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "-plaintext":
            continue
        if arg == "-d":
            data = next(args)
            if data == "@":
                data = sys.stdin.read()
        elif arg.startswith("-"):
            print(f"grpcurl stand-in: unsupported flag {arg}", file=sys.stderr)
            return 2
        else:
            rest.append(arg)
    if len(rest) < 2:
        print("grpcurl stand-in: usage: grpcurl -plaintext [-d JSON] HOST:PORT (list | describe X | METHOD)",
              file=sys.stderr)
        return 2
    target, verb, *more = rest
    with grpc.insecure_channel(target) as channel:
        reflection = Reflection(channel)
        if verb == "list":
            print("\n".join(reflection.services()))
            return 0
        if verb == "describe":
            print(_describe(reflection, more[0]))
            return 0
        return _call(channel, reflection, verb, data)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
