namespace Lab.Fusefs;

/// <summary>How <see cref="FuseServer.Mount"/> mounts.</summary>
public sealed class FuseMountOptions
{
    /// <summary>Let users other than the mounter use the mount (mount option allow_other).</summary>
    public bool AllowOther { get; init; } = true;
    /// <summary>Let the kernel check permissions from the attributes (mount option default_permissions).</summary>
    public bool DefaultPermissions { get; init; } = true;
}

/// <summary>A mount that cannot be made, with one message saying why.</summary>
public sealed class FuseMountException : Exception
{
    public FuseMountException(string message) : base(message) { }
}

/// <summary>Reads /proc/self/mountinfo.</summary>
internal static class MountInfo
{
    public readonly record struct Entry(string MountPoint, string FsType, string Source);

    public static List<Entry> Read()
    {
        var list = new List<Entry>();
        foreach (var line in File.ReadAllLines("/proc/self/mountinfo"))
        {
            // id parent major:minor root mountpoint options [optional...] - fstype source superopts
            var f = line.Split(' ');
            int dash = Array.IndexOf(f, "-");
            if (f.Length < 5 || dash < 0 || dash + 2 >= f.Length) continue;
            list.Add(new Entry(Unescape(f[4]), f[dash + 1], Unescape(f[dash + 2])));
        }
        return list;
    }

    // The kernel writes space, tab, newline and backslash as \ooo.
    private static string Unescape(string s)
    {
        if (!s.Contains('\\')) return s;
        var sb = new System.Text.StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && i + 3 < s.Length
                && IsOct(s[i + 1]) && IsOct(s[i + 2]) && IsOct(s[i + 3]))
            {
                sb.Append((char)((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
                i += 3;
            }
            else sb.Append(s[i]);
        }
        return sb.ToString();
    }

    private static bool IsOct(char c) => c >= '0' && c <= '7';
}
