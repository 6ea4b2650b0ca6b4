"""S3-compatible storage for results too large to travel inline (RunPod caps a job result at
about 20 MB). Configured with the `BUCKET_*` variables RunPod workers use; each upload answers a
presigned URL."""

from __future__ import annotations

import io
import re

from services.core.config import Settings

URL_LIFETIME_S = 7 * 24 * 3600


class OutputStore:
    def __init__(self, endpoint_url: str, access_key_id: str, secret_access_key: str, bucket: str) -> None:
        import boto3  # arrives with the runpod SDK; loaded only when a bucket is configured
        from botocore.config import Config

        match = re.search(r"s3[.-]([a-z0-9-]+)\.", endpoint_url)
        self.bucket = bucket
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=match.group(1) if match else "us-east-1",
            config=Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"}),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> OutputStore | None:
        if not (
            settings.bucket_endpoint_url
            and settings.bucket_access_key_id
            and settings.bucket_secret_access_key
        ):
            return None
        return cls(
            settings.bucket_endpoint_url,
            settings.bucket_access_key_id,
            settings.bucket_secret_access_key,
            settings.bucket_name,
        )

    def put(self, key: str, data: bytes, mime: str) -> str:
        self.client.upload_fileobj(io.BytesIO(data), self.bucket, key, ExtraArgs={"ContentType": mime})
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=URL_LIFETIME_S
        )
