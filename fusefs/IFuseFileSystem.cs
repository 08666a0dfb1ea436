namespace Lab.Fusefs;

/// <summary>
/// The file-system side of a FUSE session. The transport decodes and validates each request, calls
/// one of these methods on one of its threads (several at a time), and encodes the answer. Every
/// method returns 0 or a positive errno. Names are the raw bytes of one path component (no NUL, no
/// '/' guaranteed by nothing: implementations check). Defaults answer ENOSYS.
/// </summary>
public interface IFuseFileSystem
{
    /// <summary>Called once the session has ended (after the last request), e.g. to flush caches.</summary>
    void Destroy() { }

    /// <summary>Called by <see cref="FuseServer.Mount"/>: the session to send notifications (cache
    /// invalidations) through.</summary>
    void Attach(IFuseNotifier notifier) { }

    /// <summary>Whether <see cref="ReadDirPlus"/> is implemented (READDIRPLUS is negotiated only then).</summary>
    bool SupportsReadDirPlus => false;

    /// <summary>Whether the backing side stores POSIX ACLs as the system.posix_acl_* attributes: then, on a
    /// mount with default_permissions, FUSE_POSIX_ACL is negotiated and the kernel enforces them.</summary>
    bool SupportsPosixAcl => false;

    /// <summary>Whether SETATTR honours FATTR_KILL_SUIDGID and WRITE the kill flag (FUSE_HANDLE_KILLPRIV_V2):
    /// then the kernel leaves clearing S_ISUID/S_ISGID to us, with the caller's groups to decide it.</summary>
    bool HandlesKillPriv => false;

    int Lookup(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, out FuseEntryOut entry);
    void Forget(ulong node, ulong nlookup) { }
    int GetAttr(in FuseContext c, ulong node, ulong? fh, out FuseAttrOut attr);
    int SetAttr(in FuseContext c, ulong node, in FuseSetAttrIn set, out FuseAttrOut attr) { attr = default; return Errno.ENOSYS; }
    int ReadLink(in FuseContext c, ulong node, Span<byte> dest, out int length) { length = 0; return Errno.ENOSYS; }
    int Symlink(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, ReadOnlySpan<byte> target, out FuseEntryOut entry) { entry = default; return Errno.ENOSYS; }
    int Mknod(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, uint mode, uint rdev, out FuseEntryOut entry) { entry = default; return Errno.ENOSYS; }
    int Mkdir(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, uint mode, out FuseEntryOut entry) { entry = default; return Errno.ENOSYS; }
    int Unlink(in FuseContext c, ulong parent, ReadOnlySpan<byte> name) => Errno.ENOSYS;
    int Rmdir(in FuseContext c, ulong parent, ReadOnlySpan<byte> name) => Errno.ENOSYS;
    int Rename(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, ulong newParent, ReadOnlySpan<byte> newName, uint flags) => Errno.ENOSYS;
    int Link(in FuseContext c, ulong node, ulong newParent, ReadOnlySpan<byte> newName, out FuseEntryOut entry) { entry = default; return Errno.ENOSYS; }
    int Open(in FuseContext c, ulong node, uint flags, out FuseOpenOut open) { open = default; return Errno.ENOSYS; }
    int Create(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, uint flags, uint mode, out FuseEntryOut entry, out FuseOpenOut open) { entry = default; open = default; return Errno.ENOSYS; }
    int Read(in FuseContext c, ulong node, ulong fh, long offset, Span<byte> dest, out int read) { read = 0; return Errno.ENOSYS; }
    int Write(in FuseContext c, ulong node, ulong fh, long offset, ReadOnlySpan<byte> data, out int written) { written = 0; return Errno.ENOSYS; }
    /// <summary>Before a WRITE whose writer lacks CAP_FSETID (FUSE_WRITE_KILL_SUIDGID): clear S_ISUID, and
    /// S_ISGID when group-executable, as the kernel does before any write by such a writer.</summary>
    int KillSuidGid(in FuseContext c, ulong node) => 0;
    int Flush(in FuseContext c, ulong node, ulong fh) => 0;
    void Release(in FuseContext c, ulong node, ulong fh) { }
    int Fsync(in FuseContext c, ulong node, ulong fh, bool dataOnly) => 0;
    int OpenDir(in FuseContext c, ulong node, uint flags, out FuseOpenOut open) { open = default; return 0; }
    int ReadDir(in FuseContext c, ulong node, ulong fh, long offset, ref FuseDirWriter writer);
    /// <summary>READDIRPLUS: like ReadDir, with an entry per record (writer.Plus); every record with a
    /// non-zero node id counts one lookup of that node, so add it only when it fits (writer.Fits).</summary>
    int ReadDirPlus(in FuseContext c, ulong node, ulong fh, long offset, ref FuseDirWriter writer) => Errno.ENOSYS;
    void ReleaseDir(in FuseContext c, ulong node, ulong fh) { }
    int FsyncDir(in FuseContext c, ulong node, ulong fh, bool dataOnly) => 0;
    /// <summary>syncfs(2) on the mount.</summary>
    int SyncFs(in FuseContext c) => Errno.ENOSYS;
    int StatFs(in FuseContext c, ulong node, out FuseStatfsOut statfs) { statfs = default; statfs.Bsize = 4096; statfs.NameLen = 255; statfs.Frsize = 4096; return 0; }
    int Access(in FuseContext c, ulong node, int mask) => Errno.ENOSYS;
    /// <summary>dest empty means "tell the size"; a too small dest gives ERANGE.</summary>
    int GetXattr(in FuseContext c, ulong node, ReadOnlySpan<byte> name, Span<byte> dest, out int size) { size = 0; return Errno.ENOSYS; }
    int SetXattr(in FuseContext c, ulong node, ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, int flags) => Errno.ENOSYS;
    /// <summary>dest empty means "tell the size"; a too small dest gives ERANGE.</summary>
    int ListXattr(in FuseContext c, ulong node, Span<byte> dest, out int size) { size = 0; return Errno.ENOSYS; }
    int RemoveXattr(in FuseContext c, ulong node, ReadOnlySpan<byte> name) => Errno.ENOSYS;
    int Fallocate(in FuseContext c, ulong node, ulong fh, int mode, long offset, long length) => Errno.ENOSYS;
    int Lseek(in FuseContext c, ulong node, ulong fh, long offset, int whence, out long result) { result = 0; return Errno.ENOSYS; }
    int CopyFileRange(in FuseContext c, ulong nodeIn, ulong fhIn, long offIn, ulong nodeOut, ulong fhOut, long offOut,
                      long length, ulong flags, out long copied) { copied = 0; return Errno.ENOSYS; }
    /// <summary>O_TMPFILE: an unnamed regular file in directory <paramref name="parent"/>, opened.</summary>
    int Tmpfile(in FuseContext c, ulong parent, uint flags, uint mode, out FuseEntryOut entry, out FuseOpenOut open) { entry = default; open = default; return Errno.ENOSYS; }
}

/// <summary>Notifications a file system sends the kernel about changes made behind its back. Calls only
/// queue the message (a dedicated thread writes it), so they never block, also on a request thread.</summary>
public interface IFuseNotifier
{
    /// <summary>FUSE_NOTIFY_INVAL_INODE: drop cached attributes and the page-cache range of a node
    /// (offset 0, length 0: the whole file; a negative offset: attributes only). False when not queued
    /// (the session is not running).</summary>
    bool InvalidateInode(ulong node, long offset, long length);
    /// <summary>FUSE_NOTIFY_INVAL_ENTRY: drop the cached lookup of (parent, name).</summary>
    bool InvalidateEntry(ulong parent, ReadOnlySpan<byte> name);
}
