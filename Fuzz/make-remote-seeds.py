#!/usr/bin/env python3
"""Writes the remote fuzzer's seeds (Fuzz/seeds/remote): one valid input per parser and shape,
in RemoteExercise's layout (first byte: the parser; then its input). Run from anywhere:
    Fuzz/make-remote-seeds.py"""
import gzip
import json
import os
import struct

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "remote")
os.makedirs(out, exist_ok=True)
(CHALLENGE, CONTENT_RANGE, DOCUMENT, REFERENCE, TOKEN, PLATFORM, STATUS, GZIP, HEADER) = range(9)
digest = "sha256:" + "ab" * 32
seeds = {}


def seed(name, parser, payload):
    seeds[name] = bytes([parser]) + (payload.encode() if isinstance(payload, str) else payload)


seed("challenge-bearer", CHALLENGE,
     'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"')
seed("challenge-basic", CHALLENGE, 'Basic realm="a \\"quoted\\" realm"')
seed("header-etag", HEADER, 'ETag: "5d41402abc4b2a76b9719d911017c592"\r\n')
seed("header-range", HEADER, "Content-Range: bytes 0-8388607/536875008\r\n")
seed("header-challenge", HEADER, 'WWW-Authenticate: Bearer realm="http://127.0.0.1:5001/token",service="r"\r\n')
seed("range", CONTENT_RANGE, "bytes 1048576-2097151/536875008")
seed("range-unsatisfied", CONTENT_RANGE, "bytes */4096")
layer = {"mediaType": "application/vnd.erofs.layer.v1", "digest": digest, "size": 4096}
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": 2},
            "layers": [layer, layer]}
seed("manifest-oci", DOCUMENT, json.dumps(manifest))
bare = dict(manifest)
del bare["mediaType"]
seed("manifest-content-type", DOCUMENT,
     "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8\0" + json.dumps(bare))
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 500,
     "platform": {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}}
    for arch, variant in [("amd64", None), ("arm64", "v8"), ("arm", "v7"), ("arm", "v5")]]}
seed("index", DOCUMENT, json.dumps(index))
seed("reference-hub", REFERENCE, "ubuntu")
seed("reference-port", REFERENCE, "localhost:5000/corpus/lz4hc:v1")
seed("reference-digest", REFERENCE, "ghcr.io/erofs/images/base@" + digest)
seed("token", TOKEN, json.dumps({"token": "eyJhbGciOiJFUzI1NiJ9.e30.sig", "expires_in": 300}))
seed("token-oauth", TOKEN, json.dumps({"access_token": "abc", "expires_in": 1.5, "issued_at": "2026-12-06T00:00:00Z"}))
seed("oauth-error", TOKEN, json.dumps({"error": "invalid_grant", "error_description": "expired"}))
seed("platform", PLATFORM, "linux/arm64/v8")
seed("platform-short", PLATFORM, "linux/amd64")
seed("s3-denied", STATUS, struct.pack(">H", 303) +
     b"<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we "
     b"calculated does not match</Message></Error>")
seed("s3-region", STATUS, struct.pack(">H", 300) +
     b"<Error><Code>AuthorizationHeaderMalformed</Code><Message>wrong region</Message>"
     b"<Region>eu-west-1</Region></Error>")
# A gzip stream and the zinfo of version 1 with one checkpoint (the implied one after the
# 10-byte header): 12 bytes, count 1, span 4 MiB.
text = b"".join(b"file %d: erofs remote layer bytes\n" % i for i in range(300))
blob = gzip.compress(text, mtime=0)
zinfo = struct.pack("<IQ", 1, 4 << 20)
seed("gzip-v1", GZIP, struct.pack(">H", len(zinfo)) + zinfo + blob)
# Version 2, compact (RemoteExercise adds the windows): the first checkpoint explicit.
zinfo2 = struct.pack("<IQ", 1, 4 << 20) + struct.pack("<QQB", 10, 0, 0)
seed("gzip-v2", GZIP, struct.pack(">H", len(zinfo2)) + zinfo2 + blob)

for name in os.listdir(out):
    os.remove(os.path.join(out, name))
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
