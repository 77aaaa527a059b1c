"""Produce to and consume from a running Ferrolog cluster with nothing but
the gRPC API: stubs generated from proto/ with grpcio-tools.

Usage: python ferrolog_example.py [BROKER_HOST:PORT]   (default 127.0.0.1:9092)

It creates a topic (if missing), produces one batch with acks=all, fetches
it back from the partition leader, checks every batch's CRC32C, and commits
and reads back a consumer-group offset. Exits non-zero on any failure.
"""

import struct
import sys
import time

import grpc

from ferrolog.v1 import ferrolog_pb2 as pb
from ferrolog.v1 import ferrolog_pb2_grpc as rpc

# --- CRC32C (Castagnoli), as the batch format requires --------------------

_POLY = 0x82F63B78
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def batch_crc(b: pb.RecordBatch) -> int:
    # Header fields 2..8 big-endian, fixed width, then the records bytes.
    header = struct.pack(
        ">qiiIIqq",
        b.producer_id,
        b.producer_epoch,
        b.base_sequence,
        b.record_count,
        b.compression,
        b.first_timestamp_ms,
        b.max_timestamp_ms,
    )
    return crc32c(header + b.records)


def make_batch(values, keys=None) -> pb.RecordBatch:
    now = int(time.time() * 1000)
    records = pb.RecordList(
        records=[
            pb.Record(value=v, key=(keys[i] if keys else None), timestamp_ms=now, offset_delta=i)
            for i, v in enumerate(values)
        ]
    )
    b = pb.RecordBatch(
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        record_count=len(values),
        compression=pb.COMPRESSION_NONE,
        first_timestamp_ms=now,
        max_timestamp_ms=now,
        records=records.SerializeToString(),
    )
    b.crc32c = batch_crc(b)
    return b


# --- Following the leader --------------------------------------------------


def leader_address(err: grpc.RpcError):
    """The leader's address from a NOT_LEADER error's ErrorInfo, if any."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.reason == "NOT_LEADER":
                    return info.metadata.get("leader_address")
    return None


def call_leader(address, make_stub, fn, tries=50):
    """Calls fn(stub) on address, following NOT_LEADER hints."""
    for _ in range(tries):
        with grpc.insecure_channel(address) as ch:
            try:
                return fn(make_stub(ch))
            except grpc.RpcError as e:
                hint = leader_address(e)
                if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                    address = hint or address
                    time.sleep(0.1)
                    continue
                raise
    raise RuntimeError("no leader found")


def main() -> int:
    broker = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
    topic = "python-example"
    try:
        call_leader(broker, rpc.AdminStub, lambda s: s.CreateTopic(pb.CreateTopicRequest(name=topic, partitions=1)))
        print(f"created topic {topic}")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    values = [f"hello from python {i}".encode() for i in range(3)]
    resp = call_leader(
        broker,
        rpc.BrokerStub,
        lambda s: s.Produce(pb.ProduceRequest(topic=topic, partition=0, acks=pb.ACKS_ALL, batch=make_batch(values))),
    )
    print(f"produced {len(values)} records at offsets {resp.base_offset}..{resp.last_offset}")

    fetched = call_leader(
        broker,
        rpc.BrokerStub,
        lambda s: s.Fetch(pb.FetchRequest(topic=topic, partition=0, offset=resp.base_offset, max_bytes=1 << 20)),
    )
    got = []
    for b in fetched.batches:
        if batch_crc(b) != b.crc32c:
            print(f"batch at {b.base_offset} fails its CRC32C", file=sys.stderr)
            return 1
        for r in pb.RecordList.FromString(b.records).records:
            got.append((b.base_offset + r.offset_delta, r.value))
    mine = [v for o, v in got if resp.base_offset <= o <= resp.last_offset]
    if mine != values:
        print(f"fetched {mine}, expected {values}", file=sys.stderr)
        return 1
    for o, v in got:
        print(f"fetched offset {o}: {v.decode()}")

    group = "python-example-group"
    call_leader(
        broker,
        rpc.GroupsStub,
        lambda s: s.CommitOffsets(
            pb.CommitOffsetsRequest(
                group=group,
                member_id="",
                member_epoch=-1,
                offsets=[pb.OffsetCommit(topic=topic, partition=0, offset=resp.last_offset + 1)],
            )
        ),
    )
    offsets = call_leader(broker, rpc.GroupsStub, lambda s: s.FetchOffsets(pb.FetchOffsetsRequest(group=group)))
    committed = {(o.topic, o.partition): o.offset for o in offsets.offsets}
    if committed.get((topic, 0)) != resp.last_offset + 1:
        print(f"committed offsets {committed}", file=sys.stderr)
        return 1
    print(f"group {group} committed offset {committed[(topic, 0)]}")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
