using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Lab.Linux;

/// <summary>
/// A program started with posix_spawn, as a shell starts it: argv[0] exactly as the user typed it
/// (Process.Start passes the path it resolved, so `ls --help` said "Usage: /usr/bin/ls"), every
/// signal at its default and none blocked (the runtime ignores SIGPIPE; a child must not inherit that).
/// </summary>
public sealed unsafe partial class Spawned
{
    public int Pid { get; }
    /// <summary>The child's standard output, when it was captured; else null.</summary>
    public Stream? Stdout { get; }

    Spawned(int pid, Stream? stdout) { Pid = pid; Stdout = stdout; }

    /// <summary>
    /// Starts <paramref name="path"/> with <paramref name="argv"/> (argv[0] included) and this process's
    /// environment with <paramref name="env"/> laid over it. <paramref name="capture"/>: stdin from
    /// /dev/null, stdout to a pipe (<see cref="Stdout"/>). Returns the errno of a failed start.
    /// </summary>
    public static Spawned? Start(string path, IReadOnlyList<string> argv, IReadOnlyDictionary<string, string> env, bool capture, out int error)
    {
        var vars = new Dictionary<string, string>();
        foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables())
            vars[(string)e.Key] = (string?)e.Value ?? "";
        foreach (var (k, v) in env) vars[k] = v;
        var strings = new List<nint>();
        nint Utf8(string s) { var p = Marshal.StringToCoTaskMemUTF8(s); strings.Add(p); return p; }
        // glibc's opaque types: posix_spawn_file_actions_t is 80 bytes, posix_spawnattr_t 336, sigset_t 128.
        byte* actions = stackalloc byte[512], attr = stackalloc byte[1024], sigs = stackalloc byte[256];
        var argvp = new nint[argv.Count + 1];
        var envp = new nint[vars.Count + 1];
        int readFd = -1, writeFd = -1;
        try
        {
            for (int i = 0; i < argv.Count; i++) argvp[i] = Utf8(argv[i]);
            int n = 0;
            foreach (var (k, v) in vars) envp[n++] = Utf8(k + "=" + v);
            nint file = Utf8(path), devnull = Utf8("/dev/null");
            if (capture)
            {
                int* fds = stackalloc int[2];
                if (Pipe2(fds, O_CLOEXEC) != 0) { error = Marshal.GetLastPInvokeError(); return null; }
                readFd = fds[0]; writeFd = fds[1];
            }
            posix_spawn_file_actions_init(actions);
            posix_spawnattr_init(attr);
            try
            {
                if (capture)
                {
                    posix_spawn_file_actions_addopen(actions, 0, devnull, 0, 0);
                    posix_spawn_file_actions_adddup2(actions, writeFd, 1);
                }
                sigfillset(sigs);
                posix_spawnattr_setsigdefault(attr, sigs);
                sigemptyset(sigs);
                posix_spawnattr_setsigmask(attr, sigs);
                posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
                int pid;
                fixed (nint* a = argvp, e = envp)
                    error = posix_spawn(&pid, file, actions, attr, a, e);
                if (error != 0) return null;
                Stream? stdout = null;
                if (capture)
                {
                    stdout = new FileStream(new SafeFileHandle(readFd, ownsHandle: true), FileAccess.Read);
                    readFd = -1;
                }
                return new Spawned(pid, stdout);
            }
            finally
            {
                posix_spawn_file_actions_destroy(actions);
                posix_spawnattr_destroy(attr);
            }
        }
        finally
        {
            if (writeFd >= 0) Close(writeFd);
            if (readFd >= 0) Close(readFd);
            foreach (var p in strings) Marshal.FreeCoTaskMem(p);
        }
    }

    /// <summary>Waits for the child; its exit status, or 128 + the signal that ended it (as a shell reports it).</summary>
    public int Wait()
    {
        int status;
        while (Waitpid(Pid, &status, 0) < 0)
            if (Marshal.GetLastPInvokeError() != EINTR) throw new InvalidOperationException($"waitpid {Pid}: errno {Marshal.GetLastPInvokeError()}");
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f);
    }

    /// <summary>access(2) with X_OK: may this process execute the file?</summary>
    public static bool MayExecute(string path) => Access(path, X_OK) == 0;

    const int O_CLOEXEC = 0x80000, EINTR = 4, X_OK = 1;
    const short POSIX_SPAWN_SETSIGDEF = 0x04, POSIX_SPAWN_SETSIGMASK = 0x08;
    const string Libc = "libc";

    [LibraryImport(Libc)] private static partial int posix_spawn(int* pid, nint path, void* actions, void* attr, nint* argv, nint* envp);
    [LibraryImport(Libc)] private static partial int posix_spawn_file_actions_init(void* actions);
    [LibraryImport(Libc)] private static partial int posix_spawn_file_actions_destroy(void* actions);
    [LibraryImport(Libc)] private static partial int posix_spawn_file_actions_adddup2(void* actions, int fd, int newfd);
    [LibraryImport(Libc)] private static partial int posix_spawn_file_actions_addopen(void* actions, int fd, nint path, int oflag, uint mode);
    [LibraryImport(Libc)] private static partial int posix_spawnattr_init(void* attr);
    [LibraryImport(Libc)] private static partial int posix_spawnattr_destroy(void* attr);
    [LibraryImport(Libc)] private static partial int posix_spawnattr_setflags(void* attr, short flags);
    [LibraryImport(Libc)] private static partial int posix_spawnattr_setsigdefault(void* attr, void* sigs);
    [LibraryImport(Libc)] private static partial int posix_spawnattr_setsigmask(void* attr, void* sigs);
    [LibraryImport(Libc)] private static partial int sigfillset(void* set);
    [LibraryImport(Libc)] private static partial int sigemptyset(void* set);
    [LibraryImport(Libc, EntryPoint = "pipe2", SetLastError = true)] private static partial int Pipe2(int* fds, int flags);
    [LibraryImport(Libc, EntryPoint = "close")] private static partial int Close(int fd);
    [LibraryImport(Libc, EntryPoint = "waitpid", SetLastError = true)] private static partial int Waitpid(int pid, int* status, int options);
    [LibraryImport(Libc, EntryPoint = "access", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Access(string path, int mode);
}
