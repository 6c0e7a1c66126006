//! The entries of a zip archive as PyTorch writes them (`torch.save` since 1.6: every entry stored, uncompressed,
//! so each is a slice of the file), read from the central directory, zip64 included (checkpoints over 4 GB).
//! Anything else (a compressed entry, an encrypted one, offsets outside the file) is an error naming the entry.
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::ops::Range;

const END_OF_CENTRAL_DIRECTORY: u32 = 0x0605_4b50;
const ZIP64_END_LOCATOR: u64 = 0x0706_4b50;
const ZIP64_END_OF_CENTRAL_DIRECTORY: u64 = 0x0606_4b50;
const CENTRAL_HEADER: u64 = 0x0201_4b50;
const LOCAL_HEADER: u64 = 0x0403_4b50;
/// A 32-bit field at this value defers to the zip64 extra field.
const ZIP64_MARK: u64 = 0xffff_ffff;

/// Little-endian reads at offsets of a byte slice, each checked against its end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&self, at: u64, len: u64) -> Result<&[u8]> {
        let start = usize::try_from(at).ok();
        let end = start.and_then(|s| s.checked_add(usize::try_from(len).ok()?));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.0.len() => Ok(&self.0[s..e]),
            _ => bail!("a zip record at byte {at} (length {len}) runs past the end of the file ({} bytes): truncated?", self.0.len()),
        }
    }
    fn u16(&self, at: u64) -> Result<u64> {
        Ok(u16::from_le_bytes(self.bytes(at, 2)?.try_into()?) as u64)
    }
    fn u32(&self, at: u64) -> Result<u64> {
        Ok(u32::from_le_bytes(self.bytes(at, 4)?.try_into()?) as u64)
    }
    fn u64(&self, at: u64) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(at, 8)?.try_into()?))
    }
}

/// Each entry's name and the byte range of its (stored) data in `file`.
pub fn stored_entries(file: &[u8]) -> Result<BTreeMap<String, Range<usize>>> {
    let r = Reader(file);
    // The end record is in the last 22 + 65535 bytes (its comment is at most 65535 bytes).
    let search_from = file.len().saturating_sub(22 + 65535);
    let end = (search_from..file.len().saturating_sub(21))
        .rev()
        .find(|&i| file[i..i + 4] == END_OF_CENTRAL_DIRECTORY.to_le_bytes())
        .context("no zip end-of-central-directory record: not a zip archive, or truncated")? as u64;
    let (mut count, mut directory_size, mut directory_start) = (r.u16(end + 10)?, r.u32(end + 12)?, r.u32(end + 16)?);
    if count == 0xffff || directory_size == ZIP64_MARK || directory_start == ZIP64_MARK {
        ensure!(end >= 20 && r.u32(end - 20)? == ZIP64_END_LOCATOR, "the zip says its directory is in zip64 records, but there is no zip64 locator");
        let record = r.u64(end - 20 + 8)?;
        ensure!(r.u32(record)? == ZIP64_END_OF_CENTRAL_DIRECTORY, "the zip64 locator points at byte {record}, where there is no zip64 end record");
        (count, directory_size, directory_start) = (r.u64(record + 32)?, r.u64(record + 40)?, r.u64(record + 48)?);
    }
    r.bytes(directory_start, directory_size)?;
    let mut entries = BTreeMap::new();
    let mut at = directory_start;
    for _ in 0..count {
        ensure!(r.u32(at)? == CENTRAL_HEADER, "the zip directory is damaged at byte {at}");
        let (flags, method) = (r.u16(at + 8)?, r.u16(at + 10)?);
        let (mut compressed, mut size, mut local) = (r.u32(at + 20)?, r.u32(at + 24)?, r.u32(at + 42)?);
        let (name_len, extra_len, comment_len) = (r.u16(at + 28)?, r.u16(at + 30)?, r.u16(at + 32)?);
        let name = String::from_utf8_lossy(r.bytes(at + 46, name_len)?).into_owned();
        // zip64: the 64-bit values of the fields marked 0xffffffff, in this order, in extra field 0x0001.
        let extra = r.bytes(at + 46 + name_len, extra_len)?;
        let mut field = 0;
        while field + 4 <= extra.len() {
            let (id, len) = (u16::from_le_bytes([extra[field], extra[field + 1]]), u16::from_le_bytes([extra[field + 2], extra[field + 3]]) as usize);
            let body = extra.get(field + 4..field + 4 + len).with_context(|| format!("zip entry {name}: a damaged extra field"))?;
            if id == 1 {
                let values = Reader(body);
                let mut next = 0;
                for value in [&mut size, &mut compressed, &mut local] {
                    if *value == ZIP64_MARK {
                        *value = values.u64(next).with_context(|| format!("zip entry {name}: a short zip64 field"))?;
                        next += 8;
                    }
                }
            }
            field += 4 + len;
        }
        ensure!(flags & 1 == 0, "zip entry {name} is encrypted");
        ensure!(method == 0, "zip entry {name} is compressed (method {method}); PyTorch writes its archives uncompressed: save the file again with torch.save");
        ensure!(compressed == size, "zip entry {name}: stored, yet its sizes differ ({compressed} and {size})");
        ensure!(r.u32(local)? == LOCAL_HEADER, "zip entry {name}: no local header at byte {local}");
        let data = local + 30 + r.u16(local + 26)? + r.u16(local + 28)?;
        r.bytes(data, size).with_context(|| format!("zip entry {name}"))?;
        entries.insert(name, data as usize..(data + size) as usize);
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(entries)
}
