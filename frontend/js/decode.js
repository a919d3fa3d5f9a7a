// Decode the base64 arrays the API sends (int8 maps, uint8 overview layers).

/** base64 string -> Uint8Array of the raw bytes. */
export function base64ToBytes(b64) {
  const binary = atob(b64 || "");
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** base64 -> Int8Array (signed view of the same bytes). */
export function decodeInt8(b64) {
  const bytes = base64ToBytes(b64);
  return new Int8Array(bytes.buffer, bytes.byteOffset, bytes.length);
}

/** base64 -> Uint8Array. */
export function decodeUint8(b64) {
  return base64ToBytes(b64);
}

/** base64 -> Uint32Array of little-endian unsigned 32-bit integers. */
export function decodeUint32(b64) {
  const bytes = base64ToBytes(b64);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const out = new Uint32Array(Math.floor(bytes.length / 4));
  for (let i = 0; i < out.length; i++) out[i] = view.getUint32(4 * i, true);
  return out;
}

/**
 * The sparse all-component maps of GET /maps -> {offsets, index, values (Float32Array, z)} plus
 * `dense(c)`: component c as a Float32Array (n_map_layers * width), zero where |z| <= threshold.
 */
export function decodeSparseMaps(maps) {
  const offsets = decodeUint32(maps.offsets.data);
  const index = decodeUint32(maps.index.data);
  const values = decodeArray(maps.values);
  const size = maps.n_map_layers * maps.width;
  return {
    offsets,
    index,
    values,
    dense(c) {
      const out = new Float32Array(size);
      for (let e = offsets[c]; e < offsets[c + 1]; e++) out[index[e]] = values[e];
      return out;
    },
  };
}

/**
 * Decode an API array object `{dtype: "int8"|"uint8", data, scale?}` to a Float32Array of
 * real values (`data * scale`; scale 1 when absent).
 */
export function decodeArray(obj) {
  if (!obj || typeof obj.data !== "string") throw new Error("The server sent an array without data.");
  let raw;
  if (obj.dtype === "int8") raw = decodeInt8(obj.data);
  else if (obj.dtype === "uint8") raw = decodeUint8(obj.data);
  else throw new Error(`Unsupported array dtype from the server: ${obj.dtype}`);
  const scale = typeof obj.scale === "number" ? obj.scale : 1;
  const out = new Float32Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw[i] * scale;
  return out;
}
