using System.Runtime.InteropServices;

namespace Lab.Interop;

/// <summary>Linux errno values (fusefs results are 0 or one of these, positive), the last call's errno, and its text.</summary>
public static class Errno
{
    public const int EPERM = 1, ENOENT = 2, ESRCH = 3, EINTR = 4, EIO = 5, ENXIO = 6, EBADF = 9, EAGAIN = 11, EACCES = 13;
    public const int EFAULT = 14, EEXIST = 17, EXDEV = 18, ENODEV = 19, ENOTDIR = 20, EISDIR = 21;
    public const int EINVAL = 22, EFBIG = 27, ENOSPC = 28, EROFS = 30, EPIPE = 32, ERANGE = 34, ENAMETOOLONG = 36, ENOSYS = 38;
    public const int ENOTEMPTY = 39, ELOOP = 40, ENODATA = 61, EOPNOTSUPP = 95, ENOTCONN = 107;

    /// <summary>errno of the last <see cref="Native"/> call made on this thread (they all set it).</summary>
    public static int Last => Marshal.GetLastPInvokeError();

    /// <summary>strerror: "No such file or directory".</summary>
    public static string StrError(int errno) => Marshal.GetPInvokeErrorMessage(errno);
}
