#!/usr/bin/env python3
"""Prepares a moto S3 server started with INITIAL_NO_AUTH_ACTION_COUNT=3 for the tests.

  moto_setup.py PORT BUCKET FILE...

The three unauthenticated requests create an IAM user, give it s3:*, and make its access key;
from then on moto checks every request's signature against that key. The bucket is created
and each FILE uploaded (key = its base name) with the new key. Prints ACCESS and SECRET.
"""
import json
import os
import sys

import boto3
from botocore.config import Config

port, bucket, files = sys.argv[1], sys.argv[2], sys.argv[3:]
endpoint = "http://127.0.0.1:%s" % port
# No retry of the unauthenticated calls: a slow first answer (moto loading its IAM backend under
# emulation) retried would create the user twice. A long read timeout instead.
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap",
                   config=Config(read_timeout=600, retries={"total_max_attempts": 1}))
iam.create_user(UserName="tester")
iam.put_user_policy(UserName="tester", PolicyName="s3", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}))
key = iam.create_access_key(UserName="tester")["AccessKey"]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
s3.create_bucket(Bucket=bucket)
for path in files:
    s3.upload_file(path, bucket, os.path.basename(path))
print(key["AccessKeyId"])
print(key["SecretAccessKey"])
