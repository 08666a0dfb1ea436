namespace Lab.Vm;

/// <summary>Protection of a mapping (the mmap PROT_* bits).</summary>
[Flags]
public enum Prot { None = 0, Read = 1, Write = 2, Exec = 4 }

/// <summary>What the faulting access was, as userfaultfd reports it.</summary>
public enum FaultAccess
{
    /// <summary>A read (or instruction fetch) of a page that is not present.</summary>
    Read,
    /// <summary>A write to a page that is not present.</summary>
    Write,
    /// <summary>A write to a page that is present but installed write-protected.</summary>
    WriteProtect,
}

/// <summary>How a fault ended.</summary>
public enum FaultResult
{
    /// <summary>The page was installed (or unprotected).</summary>
    Resolved,
    /// <summary>Nothing to do: the page was already there, or the pmap refused because it appeared meanwhile.</summary>
    Superseded,
    /// <summary>The page was poisoned: the access must raise SIGBUS (EOF, pager error, internal error).</summary>
    SigBus,
    /// <summary>No entry, or the entry's protection forbids the access.</summary>
    SigSegv,
    /// <summary>
    /// The page is being evicted (between <see cref="AddressSpace.BeginEvict"/> and
    /// <see cref="AddressSpace.CompleteEvict"/>): park the thread and fault again once
    /// the removal is done. Nothing was installed or woken.
    /// </summary>
    Retry,
}

/// <summary>Kind of a VM object.</summary>
public enum VmObjectKind
{
    /// <summary>OBJT_DEFAULT: zero-fill, no pager (shadows and anonymous memory).</summary>
    Anonymous,
    /// <summary>OBJT_VNODE: pages come from a file through <see cref="IVnode"/>.</summary>
    Vnode,
}

/// <summary>
/// madvise access advice for a range (MADV_NORMAL / MADV_RANDOM / MADV_SEQUENTIAL).
/// Linux reports no event for it, so it reaches the model through <see cref="AddressSpace.Advise"/>.
/// Each design turns it into its own read-ahead and neighbour windows.
/// </summary>
public enum Advice { Normal, Random, Sequential }
