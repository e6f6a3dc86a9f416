//! Kernel structure offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`): the
//! host programs walk `task_struct`, `fs_struct`, `mm_struct`, `files_struct` and dentries
//! with them, as CO-RE relocations would.

use std::path::Path;

use btfparse::{Offset, Readable, TypeInformation};
use sensor_common::host::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("parsing kernel BTF: {0:?}")]
    Parse(btfparse::Error),
    #[error("kernel BTF has no {0}")]
    Missing(String),
}

struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let source = start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| btfparse::Error::new(btfparse::ErrorKind::EOF, "read past the end"))?;
        buffer.copy_from_slice(source);
        Ok(())
    }
}

/// Reads the offsets the host programs need from `btf_path`.
pub fn read(btf_path: &Path) -> Result<KernelOffsets, OffsetsError> {
    let bytes = std::fs::read(btf_path)
        .map_err(|source| OffsetsError::Read { path: btf_path.display().to_string(), source })?;
    let types = TypeInformation::new(&Bytes(bytes)).map_err(OffsetsError::Parse)?;
    let of = |ty: &str, field: &str| -> Result<u32, OffsetsError> {
        let missing = || OffsetsError::Missing(format!("{ty}.{field}"));
        let id = types.id_of(ty).ok_or_else(missing)?;
        match types.offset_of(id, field).map_err(|_| missing())?.1 {
            Offset::ByteOffset(bytes) => Ok(bytes),
            Offset::BitOffsetAndSize(..) => Err(missing()),
        }
    };
    Ok(KernelOffsets {
        task_real_parent: of("task_struct", "real_parent")?,
        task_tgid: of("task_struct", "tgid")?,
        task_fs: of("task_struct", "fs")?,
        task_mm: of("task_struct", "mm")?,
        task_files: of("task_struct", "files")?,
        fs_root: of("fs_struct", "root")?,
        fs_pwd: of("fs_struct", "pwd")?,
        path_mnt: of("path", "mnt")?,
        path_dentry: of("path", "dentry")?,
        dentry_parent: of("dentry", "d_parent")?,
        dentry_name_len: of("dentry", "d_name.len")?,
        dentry_name_ptr: of("dentry", "d_name.name")?,
        vfsmount_root: of("vfsmount", "mnt_root")?,
        mount_mnt: of("mount", "mnt")?,
        mount_parent: of("mount", "mnt_parent")?,
        mount_mountpoint: of("mount", "mnt_mountpoint")?,
        mm_exe_file: of("mm_struct", "exe_file")?,
        mm_arg_start: of("mm_struct", "arg_start")?,
        mm_arg_end: of("mm_struct", "arg_end")?,
        file_path: of("file", "f_path")?,
        files_fdt: of("files_struct", "fdt")?,
        fdt_max_fds: of("fdtable", "max_fds")?,
        fdt_fd: of("fdtable", "fd")?,
        task_cred: of("task_struct", "cred")?,
        cred_euid: of("cred", "euid")?,
        cred_egid: of("cred", "egid")?,
        cred_cap_effective: of("cred", "cap_effective")?,
        // Only kernels with CONFIG_AUDIT have it; records then say u32::MAX (unset).
        task_loginuid: of("task_struct", "loginuid").unwrap_or(u32::MAX),
        dentry_inode: of("dentry", "d_inode")?,
        inode_ino: of("inode", "i_ino")?,
        inode_sb: of("inode", "i_sb")?,
        sb_dev: of("super_block", "s_dev")?,
        binprm_filename: of("linux_binprm", "filename")?,
        binprm_interp: of("linux_binprm", "interp")?,
        sb_magic: of("super_block", "s_magic")?,
        ovl_inode_upper: match (of("ovl_inode", "__upperdentry"), of("ovl_inode", "vfs_inode")) {
            (Ok(upper), Ok(inode)) if upper > inode => upper - inode,
            _ => u32::MAX,
        },
        binprm_file: of("linux_binprm", "file")?,
        file_f_mode: of("file", "f_mode")?,
        file_f_flags: of("file", "f_flags")?,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn offsets_come_from_this_kernel() {
        let path = std::path::Path::new(super::VMLINUX_BTF);
        if !path.exists() {
            return; // no BTF on this build machine; the agent refuses to start there
        }
        let o = super::read(path).expect("offsets");
        // `struct path` is {mnt, dentry} on every kernel since 2.6.
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8));
        assert!(o.dentry_name_ptr > o.dentry_name_len);
    }
}
