"""The gRPC control API: the ``.proto`` files, their generated code, the servicers and a client.

Protobuf types stay inside this package; the rest of buildsvc speaks :mod:`buildsvc.api.model`.
"""
