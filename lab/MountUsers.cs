namespace Lab;

/// <summary>
/// The processes that use a lab mount, found as umount(8) and fuser(1) find them: every process's
/// working directory, root, program, open files and mapped files under the mount, and the daemon's
/// own registry of live lab programs (`.lab/processes`), whose memory the daemon serves wherever
/// their files are. Unmounting under them stops the lab programs ("the lab daemon went away") and
/// leaves the others with ENOTCONN, so `lab unmount` refuses while this list is not empty.
/// </summary>
public static class MountUsers
{
    public sealed record User(int Pid, string Command, SortedSet<string> Uses);

    /// <summary>The users of <paramref name="mount"/> (an absolute path, no trailing slash) other than
    /// this process and the mount's daemon, by pid.</summary>
    public static List<User> Find(string mount, int daemonPid)
    {
        var found = new SortedDictionary<int, SortedSet<string>>();
        void Note(int pid, string use)
        {
            if (pid == Environment.ProcessId || pid == daemonPid) return;
            if (!found.TryGetValue(pid, out var set)) found[pid] = set = new SortedSet<string>(StringComparer.Ordinal);
            set.Add(use);
        }
        bool Under(string? path)
        {
            if (path == null) return false;
            if (path.EndsWith(" (deleted)", StringComparison.Ordinal)) path = path[..^" (deleted)".Length];
            return path == mount || path.StartsWith(mount == "/" ? "/" : mount + "/", StringComparison.Ordinal);
        }

        // Reading the directory is a request to the daemon: it lists the lab programs it serves now.
        try
        {
            foreach (var e in Directory.EnumerateFileSystemEntries(Path.Combine(mount, ".lab", "processes")))
                if (int.TryParse(Path.GetFileName(e.TrimEnd('/')), out int pid)) Note(pid, "lab program");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }

        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid)) continue;
            if (Under(Link(dir + "/cwd"))) Note(pid, "working directory");
            if (Under(Link(dir + "/root"))) Note(pid, "root directory");
            if (Under(Link(dir + "/exe"))) Note(pid, "program file");
            try
            {
                foreach (var fd in Directory.EnumerateFileSystemEntries(dir + "/fd"))
                    if (Under(Link(fd))) { Note(pid, "open file"); break; }
                foreach (var line in File.ReadLines(dir + "/maps"))
                {
                    // address perms offset dev inode path: the path is the rest of the line.
                    var parts = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
                    if (parts.Length == 6 && Under(parts[5].Trim())) { Note(pid, "mapped file"); break; }
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }   // gone, or not ours to see
        }
        return found.Select(kv => new User(kv.Key, Comm(kv.Key), kv.Value)).ToList();
    }

    /// <summary>One line: "pid 123 (sleep: working directory), pid 456 (python3: lab program, open file)".</summary>
    public static string Describe(IReadOnlyList<User> users) =>
        string.Join(", ", users.Select(u => $"pid {u.Pid} ({u.Command}: {string.Join(", ", u.Uses)})"));

    static string? Link(string path)
    {
        try { return new FileInfo(path).LinkTarget; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    static string Comm(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/comm").Trim(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return "?"; }
    }
}
