//! Reader for PyTorch's legacy (pre-1.6, non-zip) `.pth` format, in which older published
//! weights are stored: four pickles (magic number, protocol version, system info, the object
//! with its storages as persistent ids), the pickled list of storage keys, then every storage's
//! raw bytes, each preceded by its element count (u64, little endian). candle reads only the zip
//! format; this reads state dicts of contiguous tensors in the legacy one.

use anyhow::{bail, Context, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// The first pickle of every legacy file: protocol 2, LONG1 of 10 bytes, the magic number
/// 0x1950a86a20f9469cfc6c, STOP.
const MAGIC: [u8; 15] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];

/// Whether `path` starts like a legacy-format PyTorch file.
pub fn is_legacy(path: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut head = [0u8; MAGIC.len()];
    let n = f.read(&mut head).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(n == MAGIC.len() && head == MAGIC)
}

fn pickle<R: BufRead>(r: &mut R) -> Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(r)?;
    Ok(stack.finalize()?)
}

fn describe(o: &Object) -> String {
    let s = format!("{o:?}");
    s.chars().take(120).collect()
}

/// The named tensors of a legacy-format state dict.
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    let ctx = |what: &str| format!("{}: legacy PyTorch file: {what}", path.display());
    let f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut r = BufReader::new(f);
    let mut head = [0u8; MAGIC.len()];
    r.read_exact(&mut head).with_context(|| ctx("too short"))?;
    if head != MAGIC {
        bail!("{}", ctx("no magic number"));
    }
    let protocol = pickle(&mut r).with_context(|| ctx("protocol version"))?;
    if !matches!(protocol, Object::Int(1001) | Object::Long(1001)) {
        bail!("{}", ctx(&format!("unknown protocol version {}", describe(&protocol))));
    }
    pickle(&mut r).with_context(|| ctx("system info"))?;
    let obj = pickle(&mut r).with_context(|| ctx("state dict"))?;
    let keys = match pickle(&mut r).with_context(|| ctx("storage keys"))? {
        Object::List(v) => v.into_iter().map(|k| k.unicode().map_err(|o| anyhow::anyhow!("storage key {}", describe(&o)))).collect::<Result<Vec<String>>>()?,
        o => bail!("{}", ctx(&format!("storage keys are not a list: {}", describe(&o)))),
    };
    // Storages follow in key order; their element sizes come from the tensors that use them.
    let Object::Dict(entries) = obj else { bail!("{}", ctx("not a state dict")) };
    struct Info {
        name: String,
        key: String,
        dtype: DType,
        offset: usize,
        size: Vec<usize>,
        stride: Vec<usize>,
    }
    let mut infos = Vec::new();
    for (name, value) in entries {
        let Ok(name) = name.unicode() else { continue };
        let Ok((callable, args)) = value.reduce() else { continue };
        let (callable, args) = match callable {
            Object::Class { ref module_name, ref class_name } if module_name == "torch._utils" && class_name == "_rebuild_parameter" => {
                let mut a = args.tuple().map_err(|o| anyhow::anyhow!("{name}: {}", describe(&o)))?;
                a.remove(0).reduce().map_err(|o| anyhow::anyhow!("{name}: {}", describe(&o)))?
            }
            c => (c, args),
        };
        match &callable {
            Object::Class { module_name, class_name } if module_name == "torch._utils" && class_name == "_rebuild_tensor_v2" => {}
            _ => continue,
        }
        let bad = |o: Object| anyhow::anyhow!("{}", ctx(&format!("{name}: unexpected {}", describe(&o))));
        let mut a = args.tuple().map_err(bad)?;
        if a.len() < 4 {
            bail!("{}", ctx(&format!("{name}: short tensor arguments")));
        }
        let dims = |o: Object| -> Result<Vec<usize>> { Vec::<usize>::try_from(o).map_err(bad) };
        let stride = dims(a.remove(3))?;
        let size = dims(a.remove(2))?;
        let offset = a.remove(1).int_or_long().map_err(bad)? as usize;
        let mut storage = a.remove(0).persistent_load().map_err(bad)?.tuple().map_err(bad)?;
        if storage.len() < 5 {
            bail!("{}", ctx(&format!("{name}: short storage id")));
        }
        let key = storage.remove(2).unicode().map_err(bad)?;
        let (_, class_name) = storage.remove(1).class().map_err(bad)?;
        let dtype = match class_name.as_str() {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "ByteStorage" => DType::U8,
            other => bail!("{}", ctx(&format!("{name}: unsupported storage {other}"))),
        };
        infos.push(Info { name, key, dtype, offset, size, stride });
    }
    let elem_size: HashMap<&str, usize> = infos.iter().map(|i| (i.key.as_str(), i.dtype.size_in_bytes())).collect();
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for key in &keys {
        let mut n = [0u8; 8];
        r.read_exact(&mut n).with_context(|| ctx(&format!("storage {key}: truncated")))?;
        let numel = u64::from_le_bytes(n) as usize;
        let size = elem_size.get(key.as_str()).copied().unwrap_or(4);
        let mut bytes = vec![0u8; numel.checked_mul(size).context("storage size overflow")?];
        r.read_exact(&mut bytes).with_context(|| ctx(&format!("storage {key}: truncated")))?;
        storages.insert(key.clone(), bytes);
    }
    let mut out = HashMap::new();
    for i in infos {
        let bytes = storages.get(&i.key).with_context(|| ctx(&format!("{}: storage {} missing", i.name, i.key)))?;
        let numel: usize = i.size.iter().product();
        let mut expect = 1;
        let contiguous = i.size.iter().zip(&i.stride).rev().all(|(&d, &s)| {
            let ok = d == 1 || s == expect;
            expect *= d;
            ok
        });
        if !contiguous {
            bail!("{}", ctx(&format!("{}: non-contiguous tensors are not supported", i.name)));
        }
        let es = i.dtype.size_in_bytes();
        let (start, end) = (i.offset * es, (i.offset + numel) * es);
        if end > bytes.len() {
            bail!("{}", ctx(&format!("{}: data out of range", i.name)));
        }
        let t = Tensor::from_raw_buffer(&bytes[start..end], i.dtype, &i.size, &Device::Cpu)?;
        out.insert(i.name, t);
    }
    if out.is_empty() {
        bail!("{}", ctx("contains no tensors"));
    }
    Ok(out)
}
