import ArgumentParser

@main
struct ErofsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "erofs",
        abstract: "Inspect, read and serve EROFS images.",
        discussion: """
            Remote sources: inspect, ls, cat, extract and verify also read an image over HTTP(S) or from S3,
            lazily, with ranged GETs through a block cache.
              IMAGE is an http:// or https:// URL, or S3's BUCKET/KEY (or s3://BUCKET/KEY) when an s3.* option is given.
              -o http.cafile=PATH         trust this CA bundle instead of the system store
              -o http.insecure_tls        do not check the server's certificate (warned about)
              -o http.timeout=S           abandon an attempt after S seconds without a byte (30)
              -o http.connect_timeout=S   (10);  -o http.retries=N: retries on resets, short bodies, 5xx (4)
              -o s3.endpoint=URL          (AWS_ENDPOINT_URL, else https://s3.REGION.amazonaws.com)
              -o s3.region=R              (AWS_REGION, else us-east-1)
              -o s3.sig=4|2               signature version (4; erofs-utils defaults to 2)
              -o s3.urlstyle=vhost|path   (vhost, path for an IP or localhost endpoint or a dotted bucket)
              -o s3.passwd_file=PATH      s3fs format: ACCESS:SECRET, or BUCKET:ACCESS:SECRET lines
                                          (else AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; else anonymous)
              -o remote.cache=DIR|none    block cache directory (/var/cache/erofs-mount)
              -o remote.cache_size=BYTES  its size limit, unused objects evicted first (4G)
              -o remote.block_size=BYTES  cache block: the smallest fetch (64K)
              -o remote.readahead=BYTES   largest readahead of a sequential reader (8M)
            The object is pinned at open (If-Match on its ETag): if it is replaced, reads fail rather than mix versions.
            """,
        subcommands: [
            WalkCommand.self, ServeCommand.self, InspectCommand.self, ListCommand.self, CatCommand.self,
            VerifyCommand.self, ExtractCommand.self,
        ])
}
