import ArgumentParser
import RemoteSources

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
            \(RemoteSourceDescription.optionsHelp)
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
            mount.erofs mounts a layer with the same options.
            """,
        subcommands: [
            WalkCommand.self, ServeCommand.self, InspectCommand.self, ListCommand.self, CatCommand.self,
            VerifyCommand.self, ExtractCommand.self,
        ])
}
