package app

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// pngBytes is the smallest valid PNG: a 1x1 transparent pixel.
var pngBytes, _ = base64.StdEncoding.DecodeString("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")

func dataURL(mediaType string, b []byte) string {
	return "data:" + mediaType + ";base64," + base64.StdEncoding.EncodeToString(b)
}

func TestDecodeImage(t *testing.T) {
	jpeg := []byte{0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10}
	webp := []byte("RIFF\x10\x00\x00\x00WEBPVP8 ")
	cases := []struct {
		name, url, ext, err string
	}{
		{name: "png", url: dataURL("image/png", pngBytes), ext: "png"},
		{name: "upper-case type", url: dataURL("IMAGE/PNG", pngBytes), ext: "png"},
		{name: "jpeg", url: dataURL("image/jpeg", jpeg), ext: "jpg"},
		{name: "gif", url: dataURL("image/gif", []byte("GIF89a\x01\x00")), ext: "gif"},
		{name: "webp", url: dataURL("image/webp", webp), ext: "webp"},
		{name: "not a data url", url: "https://example.com/x.png", err: "Image must be a data URL"},
		{name: "not base64", url: "data:image/png,plain", err: "Image must be a base64 data URL"},
		{name: "svg is refused", url: dataURL("image/svg+xml", []byte("<svg/>")), err: `Unsupported image type "image/svg+xml"`},
		{name: "bad base64", url: "data:image/png;base64,!!!", err: "Image data is not valid base64"},
		{name: "type lies", url: dataURL("image/png", jpeg), err: "Image data is not a image/png file"},
		{name: "empty", url: "data:image/png;base64,", err: "Image data is not a image/png file"},
		{name: "too large", url: dataURL("image/png", append(append([]byte{}, pngBytes...), make([]byte, MaxImageBytes)...)), err: "Image too large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ext, data, err := DecodeImage(Image{Data: tc.url})
			if tc.err != "" {
				require.Error(t, err)
				require.True(t, strings.HasPrefix(err.Error(), tc.err), err.Error())
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.ext, ext)
			require.NotEmpty(t, data)
		})
	}
	many := make([]Image, MaxImages+1)
	for i := range many {
		many[i] = Image{Data: dataURL("image/png", pngBytes)}
	}
	require.EqualError(t, CheckImages(many), "Too many images: at most 10")
	require.NoError(t, CheckImages(many[:MaxImages]))
}

func TestPromptWithImages(t *testing.T) {
	require.Equal(t, "hi", PromptWithImages("hi", nil))
	require.Equal(t, "hi\n\n[Images provided at the following paths:]\n1. /a.png\n2. /b.jpg\n", PromptWithImages("hi", []string{"/a.png", "/b.jpg"}))
}

func FuzzDecodeImage(f *testing.F) {
	for _, s := range []string{dataURL("image/png", pngBytes), "data:image/png;base64,", "data:;base64,AAAA", "data:image/gif;base64,R0lGODlh", "data:", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, url string) {
		ext, data, err := DecodeImage(Image{Data: url})
		if err != nil {
			if ext != "" || data != nil {
				t.Fatal("an error with a result")
			}
			return
		}
		if len(data) == 0 || len(data) > MaxImageBytes || ext == "" {
			t.Fatalf("accepted %d bytes as %q", len(data), ext)
		}
	})
}
