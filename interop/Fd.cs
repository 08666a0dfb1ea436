using System.Runtime.InteropServices;
using System.Runtime.InteropServices.Marshalling;

namespace Lab.Interop;

/// <summary>
/// A file descriptor we own; Dispose closes it exactly once. Every <see cref="Native"/> call that
/// takes one holds a reference for the call's duration (<see cref="FdMarshaller"/>), so a descriptor
/// in use by one thread is not closed, and its number not reused for another file, while another
/// thread disposes it: the close waits for the last call to return. A call made after Dispose gets
/// the number -1, hence EBADF, as a raw descriptor set to -1 at close would: never an exception.
/// </summary>
[NativeMarshalling(typeof(FdMarshaller))]
public sealed class Fd : SafeHandle
{
    /// <summary>AT_FDCWD, for the *at calls (not owned: never closed).</summary>
    public static readonly Fd Cwd = new(-100, ownsHandle: false);

    public Fd() : base(-1, ownsHandle: true) { }

    public Fd(int number, bool ownsHandle = true) : base(-1, ownsHandle) => SetHandle(number);

    public override bool IsInvalid => handle == -1;

    /// <summary>The descriptor number; only meaningful while the owner keeps it open (logs, /proc/self/fd paths).</summary>
    public int Number => (int)handle;

    /// <summary>
    /// Holds a reference for a span of code that needs the raw number (poll's pollfd, a cmsg):
    /// the number stays this file's until the lease is disposed. -1 once the descriptor is disposed.
    /// </summary>
    public Lease Use()
    {
        return new Lease(TryAddRef() ? this : null);
    }

    public readonly ref struct Lease
    {
        readonly Fd? _fd;
        internal Lease(Fd? fd) => _fd = fd;
        /// <summary><paramref name="fd"/>'s lease; none (-1) for null.</summary>
        public static Lease Of(Fd? fd) => fd == null ? default : fd.Use();
        public int Number => _fd == null ? -1 : (int)_fd.DangerousGetHandle();
        public void Dispose() => _fd?.DangerousRelease();
    }

    /// <summary>Takes a reference unless the descriptor is closed (or closes meanwhile): the one
    /// way both a call's marshaller and <see cref="Use"/> hold the number.</summary>
    internal bool TryAddRef()
    {
        bool added = false;
        if (!IsClosed)
        {
            try { DangerousAddRef(ref added); }
            catch (ObjectDisposedException) { }   // disposed since the check
        }
        return added;
    }

    protected override bool ReleaseHandle()
    {
        Native.CloseNumber((int)handle);   // Linux frees the number even when close reports an error
        return true;
    }

    public override string ToString() => Number.ToString(System.Globalization.CultureInfo.InvariantCulture);
}

/// <summary>
/// How an <see cref="Fd"/> crosses into a call: a reference is taken before the call and released
/// after it (no allocation); a disposed Fd goes as -1 (EBADF). A returned descriptor becomes a new Fd.
/// </summary>
[CustomMarshaller(typeof(Fd), MarshalMode.ManagedToUnmanagedIn, typeof(In))]
[CustomMarshaller(typeof(Fd), MarshalMode.ManagedToUnmanagedOut, typeof(Out))]
public static class FdMarshaller
{
    public struct In
    {
        Fd? _fd;

        public void FromManaged(Fd fd)
        {
            _fd = fd.TryAddRef() ? fd : null;
        }

        public readonly int ToUnmanaged() => _fd == null ? -1 : (int)_fd.DangerousGetHandle();

        public readonly void Free() => _fd?.DangerousRelease();
    }

    public struct Out
    {
        int _number;
        public void FromUnmanaged(int number) => _number = number;
        public readonly Fd ToManaged() => new(_number);
        public readonly void Free() { }
    }
}
