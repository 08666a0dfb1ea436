using System.Runtime.CompilerServices;
using Lab.Fusefs;
using Lab.Interop;
using Xunit;

namespace Lab.Tests.Fusefs;

/// <summary>The wire structs have the sizes and offsets of linux/fuse.h (and the opcode table's size
/// checks come from these sizes), and struct statfs is read where glibc writes it.</summary>
public class FuseStructTests
{
    [Fact]
    public unsafe void Wire_structs_have_the_kernel_sizes()
    {
        var sizes = new (string Name, int Actual, int Kernel)[]
        {
            ("fuse_in_header", sizeof(FuseInHeader), 40), ("fuse_out_header", sizeof(FuseOutHeader), 16),
            ("fuse_init_out", sizeof(FuseInitOut), 64), ("fuse_attr", sizeof(FuseAttr), 88),
            ("fuse_entry_out", sizeof(FuseEntryOut), 128), ("fuse_attr_out", sizeof(FuseAttrOut), 104),
            ("fuse_open_out", sizeof(FuseOpenOut), 16), ("fuse_setattr_in", sizeof(FuseSetAttrIn), 88),
            ("fuse_kstatfs", sizeof(FuseStatfsOut), 80), ("fuse_getattr_in", sizeof(FuseGetAttrIn), 16),
            ("fuse_mknod_in", sizeof(FuseMknodIn), 16), ("fuse_mkdir_in", sizeof(FuseMkdirIn), 8),
            ("fuse_rename_in", sizeof(FuseRenameIn), 8), ("fuse_link_in", sizeof(FuseLinkIn), 8),
            ("fuse_rename2_in", sizeof(FuseRename2In), 16), ("fuse_open_in", sizeof(FuseOpenIn), 8),
            ("fuse_create_in", sizeof(FuseCreateIn), 16), ("fuse_read_in", sizeof(FuseReadIn), 40),
            ("fuse_write_in", sizeof(FuseWriteIn), 40), ("fuse_release_in", sizeof(FuseReleaseIn), 24),
            ("fuse_flush_in", sizeof(FuseFlushIn), 24), ("fuse_fsync_in", sizeof(FuseFsyncIn), 16),
            ("fuse_forget_one", sizeof(FuseForgetOne), 16), ("fuse_batch_forget_in", sizeof(FuseBatchForgetIn), 8),
            ("fuse_access_in", sizeof(FuseAccessIn), 8), ("fuse_getxattr_in", sizeof(FuseGetXattrIn), 8),
            ("fuse_getxattr_out", sizeof(FuseGetXattrOut), 8), ("fuse_write_out", sizeof(FuseWriteOut), 8),
            ("fuse_setxattr_in", sizeof(FuseSetXattrIn), 8), ("fuse_fallocate_in", sizeof(FuseFallocateIn), 32),
            ("fuse_lseek_in", sizeof(FuseLseekIn), 24), ("fuse_lseek_out", sizeof(FuseLseekOut), 8),
            ("fuse_copy_file_range_in", sizeof(FuseCopyFileRangeIn), 56),
            ("fuse_notify_inval_inode_out", sizeof(FuseNotifyInvalInodeOut), 24),
            ("fuse_notify_inval_entry_out", sizeof(FuseNotifyInvalEntryOut), 16),
        };
        Assert.Empty(sizes.Where(s => s.Actual != s.Kernel).Select(s => $"{s.Name}: {s.Actual} bytes, the kernel's {s.Kernel}"));
        // Fields after a mix of 32- and 64-bit ones sit where the kernel puts them.
        var r = default(FuseReadIn);
        Assert.Equal(16, (int)Unsafe.ByteOffset(ref Unsafe.As<FuseReadIn, byte>(ref r), ref Unsafe.As<uint, byte>(ref r.Size)));
        Assert.Equal(24, (int)Unsafe.ByteOffset(ref Unsafe.As<FuseReadIn, byte>(ref r), ref Unsafe.As<ulong, byte>(ref r.LockOwner)));
        var a = default(FuseSetAttrIn);
        Assert.Equal(68, (int)Unsafe.ByteOffset(ref Unsafe.As<FuseSetAttrIn, byte>(ref a), ref Unsafe.As<uint, byte>(ref a.Mode)));
        var e = default(FuseEntryOut);
        Assert.Equal(40, (int)Unsafe.ByteOffset(ref Unsafe.As<FuseEntryOut, byte>(ref e), ref Unsafe.As<FuseAttr, byte>(ref e.Attr)));
    }

    [Fact]
    public unsafe void Statfs_is_read_where_the_kernel_writes_it()
    {
        Assert.Equal(120, sizeof(Native.StatFs));
        Native.StatFs sf;
        Assert.Equal(0, Native.StatFsPath(Path.GetTempPath(), &sf));
        Assert.Equal(255, sf.Namelen); // every file system a temp dir sits on here (tmpfs, ext4, overlay, btrfs, xfs)
        Assert.True(sf.Bsize > 0 && sf.Blocks > 0 && sf.Frsize > 0, $"bsize {sf.Bsize}, blocks {sf.Blocks}, frsize {sf.Frsize}");
    }
}
