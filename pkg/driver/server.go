package driver

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"k8s.io/klog/v2"
)

// logCalls logs every CSI call with its request (secrets stripped), its gRPC
// code and its duration.
func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	code := status.Code(err)
	if err != nil {
		klog.ErrorS(err, "CSI call failed", "method", info.FullMethod, "code", code.String(),
			"request", stripSecrets(req), "duration", time.Since(start))
	} else {
		klog.V(3).InfoS("CSI call", "method", info.FullMethod, "code", code.String(),
			"request", stripSecrets(req), "duration", time.Since(start))
	}
	return resp, err
}

// stripSecrets renders a request as JSON with every field marked csi_secret
// (and every field called secrets) replaced by a placeholder.
func stripSecrets(req any) string {
	m, ok := req.(proto.Message)
	if !ok {
		return ""
	}
	c := proto.Clone(m)
	redact(c.ProtoReflect())
	b, err := protojson.MarshalOptions{EmitUnpopulated: false}.Marshal(c)
	if err != nil {
		return "<unprintable>"
	}
	return string(b)
}

func redact(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case isSecret(fd):
			if fd.IsMap() {
				mp := m.Mutable(fd).Map()
				mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
					mp.Set(k, protoreflect.ValueOfString("***stripped***"))
					return true
				})
			} else if fd.Kind() == protoreflect.StringKind && !fd.IsList() {
				m.Set(fd, protoreflect.ValueOfString("***stripped***"))
			} else {
				m.Clear(fd)
			}
		case fd.Kind() == protoreflect.MessageKind && fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				redact(l.Get(i).Message())
			}
		case fd.Kind() == protoreflect.MessageKind && fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					redact(mv.Message())
					return true
				})
			}
		case fd.Kind() == protoreflect.MessageKind:
			redact(v.Message())
		}
		return true
	})
}

// isSecret reports whether a field carries secrets: the CSI spec marks them
// with the csi_secret field option; the name check covers every such field
// the spec has today even if options are not registered.
func isSecret(fd protoreflect.FieldDescriptor) bool {
	if fd.Name() == "secrets" {
		return true
	}
	opts := fd.Options()
	if opts == nil {
		return false
	}
	found := false
	opts.ProtoReflect().Range(func(x protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if x.IsExtension() && x.FullName() == "csi.v1.csi_secret" && v.Bool() {
			found = true
		}
		return !found
	})
	return found
}
