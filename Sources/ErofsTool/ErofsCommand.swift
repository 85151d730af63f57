import ArgumentParser

@main
struct ErofsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "erofs",
        abstract: "Inspect, read and serve EROFS images.",
        discussion: """
            Remote sources: inspect, ls, cat, extract and verify also read IMAGE
            over HTTP(S) or from S3, lazily (ranged GETs, a block cache). IMAGE is
            an http:// or https:// URL, or BUCKET/KEY (or s3://BUCKET/KEY) when an
            s3.* option is given. Options (-o KEY=VALUE,...):
              http.cafile=PATH        trust this CA bundle, not the system store
              http.insecure_tls       skip certificate checks (warned about)
              http.timeout=S          give up an attempt after S s without a byte
                                      (30); http.connect_timeout=S (10)
              http.retries=N          retries on resets, short bodies, 5xx (4)
              s3.endpoint=URL         AWS_ENDPOINT_URL, else AWS for the region
              s3.region=R             AWS_REGION, else us-east-1
              s3.sig=4|2              signature version: 4 (erofs-utils: 2)
              s3.urlstyle=vhost|path  vhost; path for IP/localhost endpoints
              s3.passwd_file=PATH     s3fs format: ACCESS:SECRET lines, or
                                      BUCKET:ACCESS:SECRET; else AWS_ACCESS_KEY_ID,
                                      AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN;
                                      else anonymous
              remote.cache=DIR|none   block cache (/var/cache/erofs-mount)
              remote.cache_size=N     its limit (4G); unused objects go first
              remote.block_size=N     cache block, the smallest fetch (64K)
              remote.readahead=N      largest sequential readahead (8M)
            The object is pinned when opened (If-Match on its ETag): if it is
            replaced, reads fail rather than mix two versions.

            OCI registries: with any oci.* option IMAGE is an image reference,
            [REGISTRY[:PORT]/]REPO[:TAG|@sha256:DIGEST] (Docker Hub by default,
            as docker parses it), and one layer of it is read (http.* and
            remote.* apply; the cache is keyed by the layer's digest):
              oci.layer=N             layer N (0 = first) of the manifest
              oci.blob=DIGEST         the layer with this digest (sha256: added)
                                      one of the two when the image has >1 layer
              oci.platform=OS/ARCH[/VARIANT]  from an index (default: the host's,
                                      matched as containerd does)
              oci.insecure            plain http to the registry
              oci.tarindex=PATH       a tar or gzip-tar layer read through its
                                      EROFS tar index (mkfs.erofs --tar=i)
              oci.zinfo=PATH          gzip checkpoints (mkfs.erofs --gzinfo) for
                                      a gzip-tar layer
              oci.username=U,oci.password=P  visible in the process list (warned
                                      about); else ~/.docker/config.json (or
                                      $DOCKER_CONFIG): auths, identitytoken,
                                      credHelpers/credsStore; else anonymous
            A digest in the reference pins the manifest and config; the layer's
            size is checked against the manifest. zstd layers are refused.
            """,
        subcommands: [
            WalkCommand.self, ServeCommand.self, InspectCommand.self, ListCommand.self, CatCommand.self,
            VerifyCommand.self, ExtractCommand.self,
        ])
}
