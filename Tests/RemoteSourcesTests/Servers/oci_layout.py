#!/usr/bin/env python3
"""Writes an OCI image layout for `skopeo copy oci:DIR:TAG ...`.

oci_layout.py DIR TAG [--platform OS/ARCH[/VARIANT]]... LAYER:MEDIATYPE...
One image with the given layers; with --platform (repeatable), an index of one single-layer
image per platform: the Nth platform's image has the Nth layer. Prints nothing; exits non-zero on error.

oci_layout.py --push DIR TAG http://HOST:PORT/REPO
Pushes the layout's image with the Distribution API as it is (monolithic blob uploads, then the
manifest). For an uncompressed tar layer: skopeo's docker transport gzips those on the way.
"""
import hashlib, json, os, sys, urllib.request


def blob(directory, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(directory, "blobs", "sha256", digest)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)
    return "sha256:" + digest, len(data)


def main():
    directory, tag = sys.argv[1], sys.argv[2]
    platforms, layers = [], []
    arguments = sys.argv[3:]
    while arguments:
        item = arguments.pop(0)
        if item == "--platform":
            platforms.append(arguments.pop(0))
        else:
            path, media = item.rsplit(":", 1) if item.count(":") else (item, "application/vnd.erofs.layer.v1")
            layers.append((path, media))
    os.makedirs(os.path.join(directory, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(directory, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    descriptors = []
    for path, media in layers:
        with open(path, "rb") as f:
            data = f.read()
        d, size = blob(directory, data)
        descriptors.append({"mediaType": media, "digest": d, "size": size})

    def image(os_name, arch, variant, descriptors):
        config = {"architecture": arch, "os": os_name, "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in descriptors]}}
        if variant:
            config["variant"] = variant
        cd, cs = blob(directory, json.dumps(config).encode())
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                    "layers": descriptors}
        md, ms = blob(directory, json.dumps(manifest).encode())
        return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}

    if platforms:
        entries = []
        for platform, layer in zip(platforms, descriptors):
            parts = platform.split("/")
            entry = image(parts[0], parts[1], parts[2] if len(parts) > 2 else None, [layer])
            entry["platform"] = {"os": parts[0], "architecture": parts[1]}
            if len(parts) > 2:
                entry["platform"]["variant"] = parts[2]
            entries.append(entry)
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
        top_digest, top_size = blob(directory, json.dumps(index).encode())
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": top_digest, "size": top_size}
    else:
        top = image("linux", "amd64", None, descriptors)
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [top]}, f)


def push(directory, tag, target):
    scheme, rest = target.split("://", 1)
    host, repository = rest.split("/", 1)
    base = f"{scheme}://{host}"
    with open(os.path.join(directory, "index.json")) as f:
        top = json.load(f)["manifests"][0]

    def read(digest):
        with open(os.path.join(directory, "blobs", "sha256", digest.split(":")[1]), "rb") as f:
            return f.read()

    def upload(digest):
        head = urllib.request.Request(f"{base}/v2/{repository}/blobs/{digest}", method="HEAD")
        try:
            urllib.request.urlopen(head)
            return
        except urllib.error.HTTPError:
            pass
        start = urllib.request.urlopen(urllib.request.Request(f"{base}/v2/{repository}/blobs/uploads/", method="POST"))
        location = start.headers["Location"]
        if location.startswith("/"):
            location = base + location
        separator = "&" if "?" in location else "?"
        put = urllib.request.Request(f"{location}{separator}digest={digest}", data=read(digest), method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(put)

    def send(descriptor, reference):
        document = json.loads(read(descriptor["digest"]))
        for child in document.get("manifests", []):
            send(child, child["digest"])
        for item in document.get("layers", []) + ([document["config"]] if "config" in document else []):
            upload(item["digest"])
        put = urllib.request.Request(f"{base}/v2/{repository}/manifests/{reference}", data=read(descriptor["digest"]),
                                     method="PUT", headers={"Content-Type": descriptor["mediaType"]})
        urllib.request.urlopen(put)

    send(top, tag)


if sys.argv[1] == "--push":
    push(sys.argv[2], sys.argv[3], sys.argv[4])
else:
    main()
