namespace Lab.Vm;

/// <summary>
/// The file layer under a vnode object: the lab file system's page cache for one file.
/// Implemented by the daemon over fusefs (a memfd per file); by an in-memory file in tests.
/// All offsets are in bytes unless named pindex (page index).
/// </summary>
public interface IVnode
{
    /// <summary>The inode number on the lab mount, for display. Not an identity: a deleted file's number
    /// goes to the next file made. The VM tells vnodes apart by the object itself.</summary>
    ulong Ino { get; }

    /// <summary>The VM made this vnode's object: the file must stay readable (even once unlinked) until
    /// <see cref="ObjectTerminated"/>, as a mapping keeps a deleted file alive (vnode_pager_alloc's vref).</summary>
    void ObjectCreated() { }

    /// <summary>The vnode object is gone (no mapping or fault refers to it): the file may be let go.</summary>
    void ObjectTerminated() { }

    /// <summary>Current file size in bytes.</summary>
    long Size { get; }

    /// <summary>
    /// Make pages [pindex, pindex+count) valid in the page cache (reading the backing file
    /// where needed) and copy their bytes into <paramref name="dest"/> (count pages long).
    /// Bytes past EOF in the last page read as zero. Returns 0 or a positive errno.
    /// </summary>
    int ReadPages(long pindex, int count, Span<byte> dest);

    /// <summary>Make pages valid in the page cache without copying them out (for shared mappings).</summary>
    int LoadPages(long pindex, int count);

    /// <summary>Whether the page is valid (resident) in the page cache.</summary>
    bool IsResident(long pindex);

    /// <summary>Mark resident pages in the range dirty (they were written through a shared mapping).</summary>
    void MarkDirty(long pindex, long count);

    /// <summary>Write dirty pages back to the backing file. Returns 0 or a positive errno.</summary>
    int Flush();
}
