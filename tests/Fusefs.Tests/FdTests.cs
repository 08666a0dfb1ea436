using Lab.Interop;
using Xunit;

namespace Lab.Tests.Fusefs;

/// <summary>
/// Fd, the SafeHandle every descriptor of fusefs and the daemon lives in. Other tests in this
/// process open and close descriptors in parallel, so each test moves its descriptor to a high
/// number of its own (dup2) and checks that number, never "the lowest free one".
/// </summary>
public sealed unsafe class FdTests
{
    const int F_GETFD = 1;

    // A number no descriptor of this process uses now (the tests' files stay far below).
    static int FreeHighNumber(int from)
    {
        for (int n = from; n < from + 100; n++)
            if (!IsOpen(n)) return n;
        throw new InvalidOperationException("no free descriptor number");
    }

    static bool IsOpen(int n)
    {
        using var probe = new Fd(n, ownsHandle: false);
        return Native.Fcntl(probe, F_GETFD, 0) >= 0;
    }

    // An eventfd also reachable at the high number n, owned by the returned Fd; src stays the caller's.
    static Fd At(int n, Fd src)
    {
        Assert.Equal(n, Native.Dup2(src, n));
        return new Fd(n);
    }

    [Fact]
    public void Dispose_closes_exactly_once()
    {
        using var src = Native.EventFd(0, Native.EFD_CLOEXEC);
        Assert.False(src.IsInvalid);
        int n = FreeHighNumber(700);
        var fd = At(n, src);
        Assert.True(IsOpen(n));
        fd.Dispose();
        Assert.False(IsOpen(n));
        // The number now names another open file; disposing the old Fd again must leave it alone.
        using var other = At(n, src);
        fd.Dispose();
        fd.Close();
        Assert.True(IsOpen(n));
        other.Dispose();
        Assert.False(IsOpen(n));
    }

    [Fact]
    public void A_call_after_Dispose_gets_EBADF_not_an_exception()
    {
        var fd = Native.EventFd(0, Native.EFD_CLOEXEC | Native.EFD_NONBLOCK);
        Assert.False(fd.IsInvalid);
        fd.Dispose();
        ulong v = 1;
        Assert.Equal(-1, (long)Native.Write(fd, &v, 8));
        Assert.Equal(Errno.EBADF, Errno.Last);
        Assert.Equal(-1, (long)Native.Read(fd, &v, 8));
        Assert.Equal(Errno.EBADF, Errno.Last);
        Assert.Equal(-1, Native.Ioctl(fd, Native.UFFDIO_WAKE, &v));
        Assert.Equal(Errno.EBADF, Errno.Last);
        using (var lease = fd.Use()) Assert.Equal(-1, lease.Number);
        // A failed open gives an invalid Fd, whose calls fail the same way.
        using var missing = Native.Open("/nonexistent/lab-fd-test", Native.O_RDONLY | Native.O_CLOEXEC, 0);
        Assert.True(missing.IsInvalid);
        Assert.Equal(Errno.ENOENT, Errno.Last);
        Assert.Equal(-1, (long)Native.Read(missing, &v, 8));
        Assert.Equal(Errno.EBADF, Errno.Last);
    }

    [Fact]
    public void A_call_in_flight_keeps_the_number_until_it_returns()
    {
        // A blocking read on an eventfd (counter 0) at number n; another thread disposes the Fd.
        // With a raw int the number would be free at once, for the next open to take, while the read
        // still runs on the old file; with Fd the close waits for the read to return.
        using var src = Native.EventFd(0, Native.EFD_CLOEXEC);
        int n = FreeHighNumber(800);
        var fd = At(n, src);
        const string name = "fdtest-blocked";
        long got = 0, result = 0;
        var reader = new Thread(() =>
        {
            ulong value = 0;
            result = Native.Read(fd, &value, 8);
            got = (long)value;
        }) { IsBackground = true, Name = name };
        reader.Start();
        WaitInRead(name, n);

        fd.Dispose();
        Assert.True(IsOpen(n));            // still the reader's file
        Assert.True(reader.IsAlive);

        ulong one = 7;
        Assert.Equal(8, (long)Native.Write(src, &one, 8));   // the same eventfd: the read returns
        Assert.True(reader.Join(10_000));
        Assert.Equal(8, result);
        Assert.Equal(7, got);
        Assert.False(IsOpen(n));           // closed once the call released it
        Assert.Equal(-1, (long)Native.Read(fd, &one, 8));
        Assert.Equal(Errno.EBADF, Errno.Last);
    }

    // Until the thread called `name` is blocked in read(2) (x86-64 syscall 0) on descriptor n.
    static void WaitInRead(string name, int n)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (DateTime.UtcNow < deadline)
        {
            foreach (var task in Directory.GetDirectories("/proc/self/task"))
            {
                try
                {
                    if (File.ReadAllText(Path.Combine(task, "comm")).Trim() != name) continue;
                    var f = File.ReadAllText(Path.Combine(task, "syscall")).Split(' ');
                    if (f.Length > 1 && f[0] == "0" && Convert.ToInt64(f[1], 16) == n) return;
                }
                catch (IOException) { }   // the task ended meanwhile
            }
            Thread.Sleep(5);
        }
        throw new TimeoutException($"thread {name} did not block in read({n})");
    }
}
