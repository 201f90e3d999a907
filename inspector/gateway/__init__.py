"""The PLC gateway (`inspector gateway`, docs/PLC.md): takes every verdict from a daemon's actuator channel,
applies the fail-safe rules of docs/PROTOCOL.md, and serves the results to PLCs over OPC UA and Modbus TCP.

One module per concern: `config` (the `gateway:` section), `intake` (ZeroMQ), `accounting` (the fail-safe
rules, no I/O), `records` (what sinks receive, and the `Sink` protocol), `opcua` and `modbus` (the sinks), and
`service` (the process). The daemon never imports this package; its dependencies are the `plc` extra.
"""
