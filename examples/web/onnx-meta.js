// The metadata_props of an ONNX file (ModelProto field 14: repeated {1: key, 2: value}), read
// straight from its protobuf bytes: onnxruntime-web does not expose custom metadata.

function varint(buf, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (pos >= buf.length) throw new Error("truncated ONNX file (varint)");
    const b = buf[pos++];
    value += (b & 0x7f) * scale;  // arithmetic, not bit operations: lengths may exceed 2^31
    if (b < 0x80) return [value, pos];
    scale *= 128;
    if (scale > 2 ** 63) throw new Error("malformed ONNX file (varint too long)");
  }
}

// Each field of one message as [number, wireType, start, end) of its payload (varints: value).
function* fields(buf, start, end) {
  let pos = start;
  while (pos < end) {
    let key;
    [key, pos] = varint(buf, pos);
    const number = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) {
      let value;
      [value, pos] = varint(buf, pos);
      yield [number, wire, value, pos];
    } else if (wire === 1 || wire === 5) {
      const size = wire === 1 ? 8 : 4;
      yield [number, wire, pos, pos + size];
      pos += size;
    } else if (wire === 2) {
      let length;
      [length, pos] = varint(buf, pos);
      if (pos + length > end) throw new Error("truncated ONNX file (length-delimited field)");
      yield [number, wire, pos, pos + length];
      pos += length;
    } else {
      throw new Error(`malformed ONNX file (wire type ${wire})`);
    }
  }
}

/** {key: value} of an ONNX model's metadata_props, from the file's bytes (Uint8Array). */
export function onnxMetadata(bytes) {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const meta = {};
  for (const [number, wire, start, end] of fields(bytes, 0, bytes.length)) {
    if (number !== 14 || wire !== 2) continue;
    let key = "";
    let value = "";
    for (const [n, w, s, e] of fields(bytes, start, end)) {
      if (w !== 2) continue;
      if (n === 1) key = decoder.decode(bytes.subarray(s, e));
      else if (n === 2) value = decoder.decode(bytes.subarray(s, e));
    }
    meta[key] = value;
  }
  return meta;
}
