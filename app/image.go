package app

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
)

// Limits on the images of one command. The frame size limit (1 MiB by
// default) usually binds first; these hold when it is raised.
const (
	MaxImages     = 10
	MaxImageBytes = 5 << 20 // decoded
)

// imageTypes are the media types accepted, with the file extension each is
// written with: the ones the providers' models read.
var imageTypes = map[string]string{
	"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp",
}

// DecodeImage decodes a `data:image/…;base64,…` URL. It checks the media
// type against the ones providers read, the encoding, the decoded size and
// that the bytes start the way that type's files do.
func DecodeImage(img Image) (ext string, data []byte, err error) {
	rest, ok := strings.CutPrefix(img.Data, "data:")
	if !ok {
		return "", nil, WireError("Image must be a data URL (data:image/png;base64,…)")
	}
	meta, payload, ok := strings.Cut(rest, ",")
	mediaType, enc, _ := strings.Cut(meta, ";")
	if !ok || enc != "base64" {
		return "", nil, WireError("Image must be a base64 data URL")
	}
	mediaType = strings.ToLower(mediaType)
	ext, known := imageTypes[mediaType]
	if !known {
		return "", nil, WireError(fmt.Sprintf("Unsupported image type %q: use PNG, JPEG, GIF or WebP", Clip(mediaType, 40)))
	}
	if base64.StdEncoding.DecodedLen(len(payload)) > MaxImageBytes+3 {
		return "", nil, WireError(fmt.Sprintf("Image too large: at most %d MiB", MaxImageBytes>>20))
	}
	data, err = base64.StdEncoding.DecodeString(payload)
	if err != nil {
		return "", nil, WireError("Image data is not valid base64")
	}
	if len(data) > MaxImageBytes {
		return "", nil, WireError(fmt.Sprintf("Image too large: at most %d MiB", MaxImageBytes>>20))
	}
	if !hasMagic(mediaType, data) {
		return "", nil, WireError(fmt.Sprintf("Image data is not a %s file", mediaType))
	}
	return ext, data, nil
}

// CheckImages validates the images of a command at the edge.
func CheckImages(images []Image) error {
	if len(images) > MaxImages {
		return WireError(fmt.Sprintf("Too many images: at most %d", MaxImages))
	}
	for _, img := range images {
		if _, _, err := DecodeImage(img); err != nil {
			return err
		}
	}
	return nil
}

func hasMagic(mediaType string, b []byte) bool {
	switch mediaType {
	case "image/png":
		return bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n"))
	case "image/jpeg":
		return len(b) >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF
	case "image/gif":
		return bytes.HasPrefix(b, []byte("GIF87a")) || bytes.HasPrefix(b, []byte("GIF89a"))
	case "image/webp":
		return len(b) >= 12 && string(b[:4]) == "RIFF" && string(b[8:12]) == "WEBP"
	}
	return false
}

// PromptWithImages appends the paths of a command's image files to its
// prompt, the way the reference tells the model where the images are.
func PromptWithImages(prompt string, paths []string) string {
	if len(paths) == 0 {
		return prompt
	}
	var b strings.Builder
	b.WriteString(prompt)
	b.WriteString("\n\n[Images provided at the following paths:]\n")
	for i, p := range paths {
		fmt.Fprintf(&b, "%d. %s\n", i+1, p)
	}
	return b.String()
}
