package main

// A deliberately small fake kubelet (and scheduler) for tests. It registers
// one Node, binds unscheduled pods to it, and reports them Running with a
// loopback pod IP, so Deployments/ReplicaSets/EndpointSlices behave as on a
// real cluster without any container runtime. See README.md.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
)

const (
	annPodIP = "testenv.lifeline.dev/pod-ip"
	annReady = "testenv.lifeline.dev/ready"
	hostIP   = "127.0.0.1"
)

type fakeKubelet struct {
	client   kubernetes.Interface
	nodeName string
	pods     corelisters.PodLister
	queue    workqueue.TypedRateLimitingInterface[string]

	mu      sync.Mutex
	ipOf    map[string]netip.Addr // pod key -> ip
	ownerOf map[netip.Addr]string // ip -> pod key
	next    netip.Addr
}

var (
	poolFirst = netip.MustParseAddr("127.1.0.1")
	poolLast  = netip.MustParseAddr("127.1.255.254")
)

func runKubelet(args []string) int {
	fs := flag.NewFlagSet("kubelet", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster")
	nodeName := fs.String("node-name", "testenv-node", "name of the node to register")
	heartbeat := fs.Duration("heartbeat", 10*time.Second, "node status / lease heartbeat period")
	workers := fs.Int("workers", 4, "pod sync workers")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("kubelet: ")

	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Printf("kubeconfig: %v", err)
		return 1
	}
	cfg.QPS, cfg.Burst = 100, 200
	cfg.UserAgent = "testenv-kubelet"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Printf("client: %v", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	k := &fakeKubelet{
		client:   client,
		nodeName: *nodeName,
		queue:    workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		ipOf:     map[string]netip.Addr{},
		ownerOf:  map[netip.Addr]string{},
		next:     poolFirst,
	}

	// Register the node (retry until the apiserver answers).
	if err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		if err := k.registerNode(ctx); err != nil {
			log.Printf("register node %s: %v (retrying)", k.nodeName, err)
			return false, nil
		}
		return true, nil
	}); err != nil {
		return 1
	}
	log.Printf("node %s registered and Ready", k.nodeName)
	go wait.UntilWithContext(ctx, k.heartbeat, *heartbeat)

	factory := informers.NewSharedInformerFactory(client, 0)
	podInformer := factory.Core().V1().Pods()
	k.pods = podInformer.Lister()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		log.Printf("informer: %v", err)
		return 1
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.Informer().HasSynced) {
		return 1
	}
	log.Printf("pod informer synced; %d workers", *workers)
	for i := 0; i < *workers; i++ {
		go wait.UntilWithContext(ctx, k.worker, time.Second)
	}
	<-ctx.Done()
	k.queue.ShutDown()
	log.Printf("shutting down")
	return 0
}

// ---- node ----

func (k *fakeKubelet) nodeConditions(now metav1.Time, old []corev1.NodeCondition) []corev1.NodeCondition {
	want := []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "testenv fake kubelet is posting ready status"},
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory"},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure"},
		{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID"},
		{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: "RouteCreated"},
	}
	for i := range want {
		want[i].LastHeartbeatTime = now
		want[i].LastTransitionTime = now
		for _, o := range old {
			if o.Type == want[i].Type && o.Status == want[i].Status {
				want[i].LastTransitionTime = o.LastTransitionTime
			}
		}
	}
	return want
}

func (k *fakeKubelet) nodeStatus(now metav1.Time, old corev1.NodeStatus) corev1.NodeStatus {
	res := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("64"),
		corev1.ResourceMemory:           resource.MustParse("256Gi"),
		corev1.ResourcePods:             resource.MustParse("1000"),
		corev1.ResourceEphemeralStorage: resource.MustParse("1Ti"),
	}
	st := old
	st.Capacity = res
	st.Allocatable = res.DeepCopy()
	st.Phase = ""
	st.Conditions = k.nodeConditions(now, old.Conditions)
	st.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: hostIP},
		{Type: corev1.NodeHostName, Address: k.nodeName},
	}
	st.DaemonEndpoints = corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}}
	st.NodeInfo = corev1.NodeSystemInfo{
		MachineID: "testenv", SystemUUID: "testenv", BootID: "testenv",
		KernelVersion: "testenv", OSImage: "testenv", ContainerRuntimeVersion: "testenv://0",
		KubeletVersion: "v1.35.4-testenv", KubeProxyVersion: "", OperatingSystem: "linux", Architecture: "amd64",
	}
	return st
}

func (k *fakeKubelet) registerNode(ctx context.Context) error {
	nodes := k.client.CoreV1().Nodes()
	now := metav1.Now()
	node, err := nodes.Get(ctx, k.nodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		node = &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: k.nodeName,
			Labels: map[string]string{
				"kubernetes.io/hostname": k.nodeName, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
				"type": "testenv",
			},
		}}
		node.Status = k.nodeStatus(now, corev1.NodeStatus{})
		if node, err = nodes.Create(ctx, node, metav1.CreateOptions{}); err != nil {
			return err
		}
		log.Printf("created node %s", k.nodeName)
	} else if err != nil {
		return err
	}
	// The TaintNodesByCondition admission plugin adds a not-ready taint on
	// create; there is no node-lifecycle controller here, so drop all taints.
	if len(node.Spec.Taints) > 0 || node.Spec.Unschedulable {
		node.Spec.Taints = nil
		node.Spec.Unschedulable = false
		if node, err = nodes.Update(ctx, node, metav1.UpdateOptions{}); err != nil {
			return err
		}
	}
	node.Status = k.nodeStatus(now, node.Status)
	if _, err = nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return err
	}
	return k.renewLease(ctx)
}

func (k *fakeKubelet) heartbeat(ctx context.Context) {
	if err := k.registerNode(ctx); err != nil && ctx.Err() == nil {
		log.Printf("heartbeat: %v", err)
	}
}

func (k *fakeKubelet) renewLease(ctx context.Context) error {
	leases := k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, k.nodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: k.nodeName, Namespace: corev1.NamespaceNodeLease},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity: ptr.To(k.nodeName), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now,
			},
		}, metav1.CreateOptions{})
		if apierrors.IsNotFound(err) { // kube-node-lease namespace not created yet
			return nil
		}
		return err
	} else if err != nil {
		return err
	}
	lease.Spec.HolderIdentity = ptr.To(k.nodeName)
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

// ---- pods ----

func (k *fakeKubelet) worker(ctx context.Context) {
	for {
		key, quit := k.queue.Get()
		if quit {
			return
		}
		err := k.sync(ctx, key)
		switch {
		case err == nil:
			k.queue.Forget(key)
		case apierrors.IsConflict(err):
			k.queue.AddRateLimited(key)
		default:
			log.Printf("sync %s: %v (requeue)", key, err)
			k.queue.AddRateLimited(key)
		}
		k.queue.Done(key)
	}
}

func (k *fakeKubelet) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := k.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		k.release(key)
		return nil
	} else if err != nil {
		return err
	}
	switch {
	case pod.Spec.NodeName != "" && pod.Spec.NodeName != k.nodeName:
		return nil // someone else's pod
	case pod.DeletionTimestamp != nil:
		if pod.DeletionGracePeriodSeconds != nil && *pod.DeletionGracePeriodSeconds == 0 {
			return nil // already asked; waiting for finalizers
		}
		// A real kubelet stops the containers, then deletes with grace 0.
		err := k.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: ptr.To[int64](0),
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if err == nil || apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			log.Printf("deleted pod %s", key)
			k.release(key)
			return nil
		}
		return err
	case pod.Spec.NodeName == "":
		if s := pod.Spec.SchedulerName; s != "" && s != corev1.DefaultSchedulerName {
			return nil // left to another scheduler
		}
		err := k.client.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: pod.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: k.nodeName},
		}, metav1.CreateOptions{})
		if err == nil {
			log.Printf("bound pod %s to %s", key, k.nodeName)
		} else if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil // already bound / gone; the informer will tell us
		}
		return err
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	ip, err := k.podIP(key, pod)
	if err != nil {
		return err
	}
	st := desiredStatus(pod, ip)
	if equality.Semantic.DeepEqual(pod.Status, st) {
		return nil
	}
	upd := pod.DeepCopy()
	upd.Status = st
	if _, err := k.client.CoreV1().Pods(ns).UpdateStatus(ctx, upd, metav1.UpdateOptions{}); err != nil {
		return err
	}
	log.Printf("pod %s: Running ip=%s ready=%v", key, ip, podReady(pod))
	return nil
}

func podReady(pod *corev1.Pod) bool { return pod.Annotations[annReady] != "false" }

// podIP returns the pod's address: the annotation if present, else the one it
// already has or the next free one from the 127.1.0.0/16 pool.
func (k *fakeKubelet) podIP(key string, pod *corev1.Pod) (netip.Addr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	want := netip.Addr{}
	if s, ok := pod.Annotations[annPodIP]; ok {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() || !a.IsLoopback() {
			log.Printf("pod %s: ignoring annotation %s=%q (want an IPv4 address in 127.0.0.0/8)", key, annPodIP, s)
		} else {
			want = a
		}
	}
	if !want.IsValid() {
		if a, ok := k.ipOf[key]; ok {
			return a, nil
		}
		if a, err := netip.ParseAddr(pod.Status.PodIP); err == nil { // e.g. after a kubelet restart
			if o, taken := k.ownerOf[a]; !taken || o == key {
				want = a
			}
		}
	}
	if !want.IsValid() {
		a := k.next
		for i := 0; ; i++ {
			if i > 1<<16 {
				return netip.Addr{}, errors.New("pod IP pool 127.1.0.1-127.1.255.254 exhausted")
			}
			if _, taken := k.ownerOf[a]; !taken {
				break
			}
			if a = a.Next(); a.Compare(poolLast) > 0 {
				a = poolFirst
			}
		}
		want = a
		if k.next = a.Next(); k.next.Compare(poolLast) > 0 {
			k.next = poolFirst
		}
	}
	if old, ok := k.ipOf[key]; ok && old != want {
		delete(k.ownerOf, old)
	}
	if o, taken := k.ownerOf[want]; taken && o != key {
		log.Printf("pod %s: address %s is also used by %s (set via annotation)", key, want, o)
	}
	k.ipOf[key] = want
	k.ownerOf[want] = key
	return want, nil
}

func (k *fakeKubelet) release(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if a, ok := k.ipOf[key]; ok {
		delete(k.ipOf, key)
		if k.ownerOf[a] == key {
			delete(k.ownerOf, a)
		}
	}
}

func desiredStatus(pod *corev1.Pod, ip netip.Addr) corev1.PodStatus {
	now := metav1.Now()
	ready := podReady(pod)
	st := *pod.Status.DeepCopy()
	st.Phase = corev1.PodRunning
	st.Reason, st.Message = "", ""
	st.HostIP = hostIP
	st.HostIPs = []corev1.HostIP{{IP: hostIP}}
	st.PodIP = ip.String()
	st.PodIPs = []corev1.PodIP{{IP: ip.String()}}
	if st.StartTime == nil {
		st.StartTime = &now
	}
	started := *st.StartTime

	cond := func(t corev1.PodConditionType, ok bool, reason string) {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		} else if reason == "" {
			reason = "TestenvNotReady"
		}
		for i := range st.Conditions {
			c := &st.Conditions[i]
			if c.Type == t {
				if c.Status != s {
					c.Status, c.LastTransitionTime = s, now
				}
				if ok {
					c.Reason, c.Message = "", ""
				} else {
					c.Reason, c.Message = reason, "annotation "+annReady+"=false"
				}
				return
			}
		}
		c := corev1.PodCondition{Type: t, Status: s, LastTransitionTime: now}
		if !ok {
			c.Reason, c.Message = reason, "annotation "+annReady+"=false"
		}
		st.Conditions = append(st.Conditions, c)
	}
	cond(corev1.PodReadyToStartContainers, true, "")
	cond(corev1.PodInitialized, true, "")
	cond(corev1.ContainersReady, ready, "ContainersNotReady")
	cond(corev1.PodReady, ready, "ContainersNotReady")
	cond(corev1.PodScheduled, true, "")

	cs := func(c corev1.Container, running, rdy bool) corev1.ContainerStatus {
		s := corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "testenv://" + c.Image,
			ContainerID: fmt.Sprintf("testenv://%s/%s", pod.UID, c.Name),
			Ready:       rdy, Started: ptr.To(running),
		}
		if running {
			s.State.Running = &corev1.ContainerStateRunning{StartedAt: started}
		} else {
			s.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: started, FinishedAt: started}
		}
		// keep observed fields the apiserver/other writers may have set
		for _, o := range pod.Status.ContainerStatuses {
			if o.Name == c.Name {
				s.RestartCount = o.RestartCount
				s.AllocatedResources = o.AllocatedResources
				s.Resources = o.Resources
			}
		}
		return s
	}
	st.InitContainerStatuses = nil
	for _, c := range pod.Spec.InitContainers {
		sidecar := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		st.InitContainerStatuses = append(st.InitContainerStatuses, cs(c, sidecar, sidecar))
	}
	st.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, cs(c, true, ready))
	}
	return st
}
