// Command ociimage assembles osbuild-controller's image from scratch into an OCI image layout, with no
// registry and no daemon (scripts/image calls it). It uses go-containerregistry, the library behind crane:
// the crane CLI mutates and indexes images only in a registry, the library does the same on local files.
//
//	ociimage -layout DIR -tag 0.1.0 -created UNIX_SECONDS -label k=v... -sbom FILE \
//	  -image linux/amd64=rootfs-amd64.tar [-image linux/arm64=rootfs-arm64.tar]
//
// The layout's index.json then holds:
//   - the multi-arch image index, named TAG (what `crane push` or `skopeo copy` publishes),
//   - each platform's image, named TAG-ARCH (what `umoci unpack` takes to make a runc bundle),
//   - the SBOM as an OCI 1.1 artifact whose subject is the index, named TAG-sbom.
//
// Every image runs as 65532:65532 with the binary as entrypoint and `run` as the default command; the
// timestamps are -created, so the same inputs give the same digests.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const refName = "org.opencontainers.image.ref.name"

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
}

func run() error {
	var images, labels list
	dir := flag.String("layout", "", "OCI image layout directory to write (replaced)")
	tag := flag.String("tag", "", "tag, e.g. 0.1.0")
	created := flag.Int64("created", 0, "creation time, Unix seconds (SOURCE_DATE_EPOCH)")
	sbom := flag.String("sbom", "", "CycloneDX JSON SBOM to attach to the index")
	flag.Var(&images, "image", "PLATFORM=ROOTFS_TAR, e.g. linux/arm64=rootfs.tar (repeatable)")
	flag.Var(&labels, "label", "KEY=VALUE image label, also an index annotation (repeatable)")
	flag.Parse()
	if *dir == "" || *tag == "" || len(images) == 0 {
		return fmt.Errorf("need -layout, -tag and at least one -image")
	}
	when := v1.Time{Time: time.Unix(*created, 0).UTC()}
	labelMap := map[string]string{}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return fmt.Errorf("label %q: want KEY=VALUE", l)
		}
		labelMap[k] = v
	}

	if err := os.RemoveAll(*dir); err != nil {
		return err
	}
	path, err := layout.Write(*dir, empty.Index)
	if err != nil {
		return err
	}
	var index v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, spec := range images {
		platformText, rootfs, ok := strings.Cut(spec, "=")
		if !ok {
			return fmt.Errorf("image %q: want PLATFORM=ROOTFS_TAR", spec)
		}
		platform, err := v1.ParsePlatform(platformText)
		if err != nil {
			return err
		}
		img, err := image(rootfs, platform, when, labelMap)
		if err != nil {
			return fmt.Errorf("%s: %w", platformText, err)
		}
		index = mutate.AppendManifests(index, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: platform},
		})
		name := fmt.Sprintf("%s-%s", *tag, platform.Architecture)
		if err := path.AppendImage(img, layout.WithPlatform(*platform),
			layout.WithAnnotations(map[string]string{refName: name})); err != nil {
			return err
		}
	}
	annotations := map[string]string{"org.opencontainers.image.created": when.Format(time.RFC3339)}
	for k, v := range labelMap {
		annotations[k] = v
	}
	index = mutate.Annotations(index, annotations).(v1.ImageIndex)
	if err := path.AppendIndex(index, layout.WithAnnotations(map[string]string{refName: *tag})); err != nil {
		return err
	}

	if *sbom != "" {
		if err := attachSBOM(path, *sbom, index, when, *tag+"-sbom"); err != nil {
			return fmt.Errorf("sbom: %w", err)
		}
	}
	digest, err := index.Digest()
	if err != nil {
		return err
	}
	fmt.Println(digest.String())
	return nil
}

// image is one platform's image: the rootfs tarball as its only layer, and the runtime configuration.
func image(rootfs string, platform *v1.Platform, when v1.Time, labels map[string]string) (v1.Image, error) {
	layer, err := tarball.LayerFromFile(rootfs, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		History:   v1.History{Created: when, CreatedBy: "scripts/image", Comment: "static osbuild-controller, CA certificates, passwd"},
		MediaType: types.OCILayer,
	})
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Variant = platform.OS, platform.Architecture, platform.Variant
	cfg.Created = when
	cfg.Config = v1.Config{
		User:         "65532:65532",
		Entrypoint:   []string{"/osbuild-controller"},
		Cmd:          []string{"run"},
		Env:          []string{"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
		WorkingDir:   "/",
		ExposedPorts: map[string]struct{}{"8080/tcp": {}},
		Labels:       labels,
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, err
	}
	return mutate.CreatedAt(img, when)
}

// attachSBOM writes the SBOM as an OCI 1.1 artifact into the layout: artifactType CycloneDX, the empty
// config, the SBOM as its one blob, and the index as its subject, so registries list it among the index's
// referrers once pushed.
func attachSBOM(path layout.Path, file string, subject v1.ImageIndex, when v1.Time, name string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	const cyclonedx = types.MediaType("application/vnd.cyclonedx+json")
	emptyConfig := []byte("{}")
	blob := func(b []byte, mediaType types.MediaType) (v1.Descriptor, error) {
		digest, size, err := v1.SHA256(bytes.NewReader(b))
		if err != nil {
			return v1.Descriptor{}, err
		}
		if err := path.WriteBlob(digest, io.NopCloser(bytes.NewReader(b))); err != nil {
			return v1.Descriptor{}, err
		}
		return v1.Descriptor{MediaType: mediaType, Digest: digest, Size: size}, nil
	}
	config, err := blob(emptyConfig, "application/vnd.oci.empty.v1+json")
	if err != nil {
		return err
	}
	sbom, err := blob(data, cyclonedx)
	if err != nil {
		return err
	}
	digest, err := subject.Digest()
	if err != nil {
		return err
	}
	size, err := subject.Size()
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  string(cyclonedx),
		Config:        config,
		Layers:        []v1.Descriptor{sbom},
		Subject:       &v1.Descriptor{MediaType: types.OCIImageIndex, Digest: digest, Size: size},
		Annotations:   map[string]string{"org.opencontainers.image.created": when.Format(time.RFC3339)},
	})
	if err != nil {
		return err
	}
	desc, err := blob(manifest, types.OCIManifestSchema1)
	if err != nil {
		return err
	}
	desc.ArtifactType = string(cyclonedx)
	desc.Annotations = map[string]string{refName: name}
	return path.AppendDescriptor(desc)
}
