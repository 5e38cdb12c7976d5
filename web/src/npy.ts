// NumPy's .npy format (numpy.lib.format), read for the one kind of array convlens serves:
// little-endian float32 ('<f4') in C order. Anything else is refused with the reason, never guessed at.

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"

export interface NpyArray {
  shape: number[];
  data: Float32Array;
}

export class NpyError extends Error {
  constructor(reason: string) {
    super(`not a little-endian float32 C-order .npy array: ${reason}`);
    this.name = "NpyError";
  }
}

function headerField(header: string, name: string, pattern: string): string {
  const match = new RegExp(`['"]${name}['"]\\s*:\\s*${pattern}`).exec(header);
  if (!match?.[1]) throw new NpyError(`the header has no ${name}: ${header.trim()}`);
  return match[1];
}

/** The shape and values of a .npy file's bytes; `accept` `["<f4", "<i4"]` also reads int32 (as floats). */
export function parseNpy(buffer: ArrayBuffer, accept: readonly string[] = ["<f4"]): NpyArray {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 10 || MAGIC.some((byte, i) => bytes[i] !== byte)) {
    throw new NpyError("the file does not start with \\x93NUMPY");
  }
  const major = bytes[6];
  const view = new DataView(buffer);
  let headerLength: number;
  let headerStart: number;
  if (major === 1) {
    headerLength = view.getUint16(8, true);
    headerStart = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new NpyError("the file ends inside its header");
    headerLength = view.getUint32(8, true);
    headerStart = 12;
  } else {
    throw new NpyError(`unknown format version ${major}.${bytes[7]}`);
  }
  const dataStart = headerStart + headerLength;
  if (dataStart > bytes.length) throw new NpyError("the file ends inside its header");
  const header = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(
    bytes.subarray(headerStart, dataStart),
  );

  const descr = headerField(header, "descr", "['\"]([^'\"]*)['\"]");
  if (!accept.includes(descr)) throw new NpyError(`dtype ${descr}, expected ${accept.join(" or ")}`);
  const fortran = headerField(header, "fortran_order", "(True|False)");
  if (fortran !== "False") throw new NpyError("Fortran (column-major) order");
  const shapeText = headerField(header, "shape", "\\(([^)]*)\\)");
  const shape = shapeText
    .split(",")
    .map((part) => part.trim())
    .filter((part) => part !== "")
    .map((part) => {
      if (!/^\d+$/.test(part)) throw new NpyError(`shape (${shapeText})`);
      return Number(part);
    });
  const count = shape.reduce((product, size) => product * size, 1);
  if (bytes.length - dataStart !== count * 4) {
    throw new NpyError(
      `shape (${shape.join(", ")}) needs ${count * 4} bytes, the file has ${bytes.length - dataStart}`,
    );
  }
  const data = new Float32Array(count);
  if (descr === "<i4") for (let i = 0; i < count; i++) data[i] = view.getInt32(dataStart + 4 * i, true);
  else for (let i = 0; i < count; i++) data[i] = view.getFloat32(dataStart + 4 * i, true);
  return { shape, data };
}
