"""The Salesforce Pub/Sub API's wire contract: ``pubsub_api.proto`` (package ``eventbus.v1``), as published.

``pubsub_api.proto`` is forcedotcom/pub-sub-api's file, unmodified (CC0). ``pubsub_api_pb2`` (messages)
and ``pubsub_api_pb2_grpc`` (the ``PubSub`` stub and servicer) are generated from it at install time
by ``deploy/proto.sh`` (grpcio-tools, pinned with grpcio and protobuf in ``constraints.txt``: generated
code refuses older runtimes) and never committed or edited. The fleet's client
(``adapters.salesforce_pubsub``) and the sandbox's server both import this one stub set: two sets for
``eventbus.v1`` in one process would clash in protobuf's descriptor pool.
"""
