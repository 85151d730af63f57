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

port, bucket, files = sys.argv[1], sys.argv[2], sys.argv[3:]
endpoint = "http://127.0.0.1:%s" % port
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
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
