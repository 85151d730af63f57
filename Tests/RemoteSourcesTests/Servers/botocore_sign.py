#!/usr/bin/env python3
"""Signs one request with botocore, the AWS SDK's signer, for comparison with ours.

  botocore_sign.py v4|v2 METHOD URL TIME ACCESS SECRET [REGION SERVICE] [Header:Value ...]
TIME is seconds since the epoch. Prints the Authorization header botocore computes. For SigV2
with virtual-host addressing, $AUTH_PATH is the /BUCKET/KEY resource (botocore's S3 client sets
it the same way: the signed resource names the bucket even when the host does).
"""
import datetime
import sys

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

version, method, url, when, access, secret = sys.argv[1:7]
rest = sys.argv[7:]
moment = datetime.datetime.fromtimestamp(int(when), datetime.timezone.utc).replace(tzinfo=None)
if version == "v4":
    region, service = rest[0], rest[1]
    headers = rest[2:]
else:
    headers = rest
request = AWSRequest(method=method, url=url, headers=dict(h.split(":", 1) for h in headers))
credentials = Credentials(access, secret)
import os
if os.environ.get("AUTH_PATH"):
    request.auth_path = os.environ["AUTH_PATH"]
if version == "v4":
    botocore.auth.get_current_datetime = lambda *a, **k: moment
    signer = botocore.auth.S3SigV4Auth(credentials, service, region) if service == "s3" else botocore.auth.SigV4Auth(credentials, service, region)
else:
    import email.utils
    signer = botocore.auth.HmacV1Auth(credentials)
    signer._get_date = lambda: email.utils.formatdate(int(when), usegmt=True)
signer.add_auth(request)
print(request.headers["Authorization"])
if version == "v2":
    print(request.headers["Date"])
